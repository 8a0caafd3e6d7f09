"""mslam_ns.slam: the SLAM system over a `TwoViewPrior`.

One file per part, read from the facade down:

- `system.py`     `SlamSystem`: the facade (`step`, `run`, `finish`, `frame_poses`, `keyframe_poses`, `points`,
                  `intrinsics`, `snapshot`).
- `shared_map.py` `SharedMap`: the ONE owner of keyframes, per-frame records and graph edges (lock, version,
                  dirty flags, consistent snapshots, growing storage with optional host offload).
- `frame.py`      `Frame`: image, transform, encoding, pose; keyframes add the canonical pointmap X, C, N, D, Q.
- `tracker.py`    `Tracker`: Sim(3) tracking against the current keyframe (LM + Huber), fusion, keyframe test.
- `matching.py`   IPM + descriptor refinement.
- `fusion.py`     weighted-pointmap fusion, calibrated ray constraint.
- `backend.py`    `Backend`: keyframe graph (consecutive + retrieval edges verified by matching), global
                  optimisation, same thread or a worker thread.
- `retrieval.py`  `RetrievalDatabase`: ASMK image retrieval over keyframes (loop closure, relocalisation).
- `reloc.py`      `Relocaliser`: back into the map after tracking loss.
- `solve.py`      block-sparse assembly and sparse solves of the keyframe graph; `optimize_graph`.
- `lm.py`         the one Levenberg-Marquardt loop (tracking and graph).

Nothing is imported here, so that `import mslam_ns.slam` stays cheap.
"""
