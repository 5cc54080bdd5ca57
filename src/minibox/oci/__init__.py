"""minibox as an OCI runtime: the runc-compatible ``minibox-oci`` command.

Spec: the OCI runtime specification (runtime.md, config.md,
config-linux.md) and runc's command line, which podman (through conmon) and
containerd (through its runc shim) call.  The package sits above
container/: config.json becomes the same child plan the Python API builds,
executed by the same C core.  One module per concept: config (validating
config.json), mounts (its mount list), state (the records under --root),
runtime (create/start/kill/delete/pause/resume/ps), exec, hooks, gate (the
program a created container waits in), cli (the command line).
See docs/oci.md.
"""
