"""cffi build script for minibox's C core (out-of-line API mode).

Run by setup.py through ``cffi_modules``; produces the extension module
``minibox._minibox_native``.  Only ``minibox._native`` imports it.

Two groups of declarations:
* the spawn engine (csrc/spawn.h, csrc/spawn.c): the child's setup steps,
  and its mount engine (csrc/rootfs.c): paths resolved inside the rootfs
  through file descriptors, also called from Python (mb_open_in_root);
* libseccomp, used in the *parent* to compile a seccomp profile into a
  classic-BPF program that the child installs as its last step;
* renameat2(2), which Python's os module lacks: minibox/records.py swaps a
  state record with its new version (RENAME_EXCHANGE).
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants source paths relative to setup.py (the repository root)
REL = "csrc"

ffibuilder = FFI()

_spawn_header = (HERE / "spawn.h").read_text()
# cffi's parser does not run the preprocessor: keep only the declarations.
_cdef_lines = [
    line for line in _spawn_header.splitlines()
    if not line.startswith("#")
]
ffibuilder.cdef("\n".join(_cdef_lines))

ffibuilder.cdef(
    """
    typedef void *scmp_filter_ctx;
    typedef uint64_t scmp_datum_t;
    enum scmp_compare {
        SCMP_CMP_NE = 1, SCMP_CMP_LT = 2, SCMP_CMP_LE = 3, SCMP_CMP_EQ = 4,
        SCMP_CMP_GE = 5, SCMP_CMP_GT = 6, SCMP_CMP_MASKED_EQ = 7, ...
    };
    enum scmp_filter_attr {
        SCMP_FLTATR_ACT_BADARCH = 2, SCMP_FLTATR_CTL_NNP = 3, SCMP_FLTATR_CTL_OPTIMIZE = 8, ...
    };
    struct scmp_version {
        unsigned int major;
        unsigned int minor;
        unsigned int micro;
    };
    const struct scmp_version *seccomp_version(void);
    struct scmp_arg_cmp {
        unsigned int arg;
        enum scmp_compare op;
        scmp_datum_t datum_a;
        scmp_datum_t datum_b;
    };
    #define SCMP_ARCH_X86_64 ...
    #define SCMP_ARCH_X86 ...
    #define SCMP_ARCH_X32 ...
    #define SCMP_ARCH_AARCH64 ...
    #define SCMP_ARCH_ARM ...
    #define SCMP_ACT_ALLOW ...
    #define SCMP_ACT_KILL_PROCESS ...
    #define SCMP_ACT_KILL_THREAD ...
    #define SCMP_ACT_TRAP ...
    #define SCMP_ACT_LOG ...
    scmp_filter_ctx seccomp_init(uint32_t def_action);
    void seccomp_release(scmp_filter_ctx ctx);
    int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
    int seccomp_arch_remove(scmp_filter_ctx ctx, uint32_t arch_token);
    int seccomp_arch_exist(const scmp_filter_ctx ctx, uint32_t arch_token);
    uint32_t seccomp_arch_native(void);
    uint32_t seccomp_arch_resolve_name(const char *arch_name);
    int seccomp_syscall_resolve_name(const char *name);
    int seccomp_syscall_resolve_name_arch(uint32_t arch_token, const char *name);
    int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
    int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                               unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
    int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
    """
)

ffibuilder.cdef(
    """
    #define AT_FDCWD ...
    #define RENAME_EXCHANGE ...
    int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
    """
)

ffibuilder.set_source(
    "minibox._minibox_native",
    '#include "spawn.h"\n#include <seccomp.h>\n#include <fcntl.h>\n#include <stdio.h>\n',
    sources=[f"{REL}/spawn.c", f"{REL}/rootfs.c"],
    include_dirs=[REL],
    libraries=["seccomp"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
