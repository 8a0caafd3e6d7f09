"""mslam_ns.slam: the SLAM system over a `TwoViewPrior`.

One file per part (see ARCHITECTURE.md):

- `frame.py`      `Frame`: image, transform, encoding, pose; keyframes add the canonical pointmap X, C, N, D, Q.
- `keyframes.py`  `KeyframeStore`: grows on demand, optional host offload, stacked accessors for the backend.
- `matching.py`   IPM + descriptor refinement (SPEC.md section 2).
- `tracker.py`    `Tracker`: Sim(3) tracking against the current keyframe (LM + Huber), fusion, keyframe test.
- `fusion.py`     weighted-pointmap fusion, calibrated ray constraint.
- `trajectory.py` `Trajectory`: every frame relative to its keyframe, recomposed from current keyframe poses.
- `solve.py`      global optimisation of the keyframe graph (backend).
- `system.py`     `SlamSystem`: the facade (`step`, `run`, `frame_poses`, `keyframe_poses`, `points`,
                  `intrinsics`, `snapshot`).
- `commands.py`   `mslam-ns run` / `mslam-ns demo`.

Nothing is imported here, so that `import mslam_ns.slam` stays cheap.
"""
