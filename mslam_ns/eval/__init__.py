"""mslam_ns.eval"""
