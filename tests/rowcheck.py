"""Comparison of llama.cpp rows shared by the kernel and golden tests."""
import numpy as np


def assert_llama_rows_close(got, expected):
    """Codes within ±1 and headers within 2 float32 ulp: an exp that rounds
    differently from glibc's expf may move a header by an ulp and a code that
    sits on a rounding boundary by one."""
    np.testing.assert_array_less(np.abs(got[:, 4:].astype(np.int32) - expected[:, 4:]), 2)
    hg = got[:, :4].copy().view(np.float32)
    he = expected[:, :4].copy().view(np.float32)
    np.testing.assert_array_less(np.abs(hg.view(np.int32) - he.view(np.int32)), 3)
