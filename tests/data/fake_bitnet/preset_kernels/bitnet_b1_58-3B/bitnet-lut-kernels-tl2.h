// preset LUT kernels for bitnet_b1_58-3B (tl2)
