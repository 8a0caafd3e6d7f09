"""mslam_ns.geometry"""
