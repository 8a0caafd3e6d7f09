"""mslam_ns.io"""
