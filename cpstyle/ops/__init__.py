"""The engine's ops. Each module holds `<op>_forward_cpu` / `<op>_backward_cpu`
(the NumPy reference: the spec), the GPU versions beside them, and dispatchers
`<op>_forward` / `<op>_backward` that pick by the array's module.

The CPU functions are written with `xp = get_array_module(x)`, so they also run
on CuPy arrays (plain CuPy array ops); the `_gpu` functions use our kernels."""
