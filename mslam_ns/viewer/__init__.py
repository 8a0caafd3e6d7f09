"""mslam_ns.viewer"""
