"""Builds the optional C fast paths: the shm ring's (ipckit/backends/common/ring/_ringfast.c) and
the POSIX queue calls of mq:// (ipckit/backends/common/_queuefast.c).

Everything else is configured in pyproject.toml.  The extension is optional: without a compiler
the install still succeeds and ipckit uses the pure-Python cursors of
ipckit/backends/common/ring/cursor.py
(``python -c "import ipckit.backends.common.ring.cursor as c; print(c.IMPLEMENTATION)"`` tells which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipckit.backends.common.ring._ringfast",
            sources=["ipckit/backends/common/ring/_ringfast.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        ),
        Extension(
            "ipckit.backends.common._queuefast",
            sources=["ipckit/backends/common/_queuefast.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            libraries=["rt"],  # (mq_* moved into libc in glibc 2.34; older ones need librt)
            optional=True,
        ),
    ]
)
