"""mslam_ns.nerfstudio"""
