"""mslam_ns.slam"""
