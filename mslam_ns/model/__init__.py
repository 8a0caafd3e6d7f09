"""mslam_ns.model"""
