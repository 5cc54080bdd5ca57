"""What a sandboxed process may do: capabilities, resource limits, seccomp.

The same policy is enforced on both isolation paths: the container's C
child applies it between clone() and execve() on the host kernel, and the
VM's guest agent applies it before execve() inside the guest.  So it lives
here, below ``container/`` and ``vm/``, as data both can read: capability
sets (capabilities(7)), rlimits (getrlimit(2)) and seccomp programs
(seccomp(2)), compiled on the host.
"""
