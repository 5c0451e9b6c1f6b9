"""The maths: the engine, the shift/token machinery, objectives, CAM bases and kernels."""
