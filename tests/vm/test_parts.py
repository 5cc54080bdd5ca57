"""The VM path's parts on their own: accelerator probe, kernel, initramfs, protocol, plan, QEMU argv."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from minibox.errors import ProtocolError
from minibox.sandbox import CappedBuffer
from minibox.spec import Limits, Mount, Spec
from minibox.vm import accel, agent, initramfs, machine, plan, virtiofs
from minibox.vm.kernel import ensure_kernel, has_pvh_note
from minibox.vm.virtiofs import Share
from minibox.vm.virtual_machine import find_qemu, kvm_probe, qemu_version


@pytest.mark.usefixtures("no_leaks")
def test_kvm_probe_falls_back_to_tcg_here_and_caches_its_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIBOX_ACCEL", raising=False)
    kernel = ensure_kernel()
    qemu = find_qemu()
    cache = tmp_path / "accel.json"
    probes: list[bool] = []

    def probe() -> bool:
        probes.append(kvm_probe(qemu, kernel, agent.build_agent()))
        return probes[-1]

    first = accel.choose(kernel, qemu_version(qemu), probe, cache=cache)
    assert first.accelerator == "tcg"  # these machines' /dev/kvm cannot boot a stock kernel
    assert "TCG" in first.reason
    if accel.kvm_device_problem() is None:  # /dev/kvm looked fine: the probe had to decide
        assert probes == [False]
        entries = json.loads(cache.read_text())
        assert [v["accelerator"] for v in entries.values()] == ["tcg"]
        assert all(k.startswith(accel.boot_id()) for k in entries)
        again = accel.choose(kernel, qemu_version(qemu), probe, cache=cache)
        assert again.accelerator == "tcg" and "cached" in again.reason
        assert probes == [False]  # no second probe boot


def test_minibox_accel_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIBOX_ACCEL", "tcg")
    verdict = accel.choose(ensure_kernel(), "x", lambda: pytest.fail("no probe when forced"))
    assert verdict.accelerator == "tcg" and "MINIBOX_ACCEL" in verdict.reason


def test_kernel_is_an_uncompressed_pvh_vmlinux_when_possible() -> None:
    kernel = ensure_kernel()
    assert kernel.path.is_file() and kernel.release
    if kernel.pvh:
        assert has_pvh_note(kernel.path.read_bytes())
    assert kernel.modules_dir is not None


def test_initramfs_is_a_newc_archive_cpio_can_read(tmp_path: Path) -> None:
    archive = tmp_path / "initrd.cpio"
    initramfs.write(archive, [initramfs.directory("dev"), initramfs.chardev("dev/console", 5, 1),
                              initramfs.file("init", b"#!/bin/sh\n", 0o755), initramfs.file("odd", b"abc")])
    listing = subprocess.run(["cpio", "-itv"], stdin=archive.open("rb"), capture_output=True, text=True, check=True)
    lines = listing.stdout.splitlines()
    assert [line.split()[-1] for line in lines] == ["dev", "dev/console", "init", "odd"]
    assert lines[1].startswith("crw-------") and lines[2].startswith("-rwxr-xr-x")
    assert os.stat(archive).st_mode & 0o777 == 0o600


def test_agent_frames_round_trip() -> None:
    reader = agent.FrameReader()
    data = agent.frame(b"X", 7, b"x 3") + agent.frame(b"O", 8, b"hello")
    got = [f for i in range(len(data)) for f in reader.feed(data[i:i + 1])]
    assert got == [(b"X", 7, b"x 3"), (b"O", 8, b"hello")]
    assert agent.parse_exit(b"x 3") == (3, None)
    assert agent.parse_exit(b"s 9") == (None, 9)
    main_exit = b"x 0 0 0 0 12 3"  # the main command's: usage, then its stdout and stderr byte counts
    assert agent.parse_exit(main_exit) == (0, None) and agent.parse_exit_output(main_exit) == (12, 3)
    assert agent.parse_exit_output(b"x 0 0 0 0") is None  # a guest that cannot count
    assert agent.parse_failure(b"execve\x002\x00/bin/nope") == ("execve", 2, "/bin/nope")


def test_the_frame_reader_refuses_oversized_unknown_and_malformed_frames() -> None:
    reader = agent.FrameReader()
    with pytest.raises(ProtocolError, match="4294967295"):  # refused on the header, nothing buffered
        list(reader.feed(struct.pack("<IBI", 0xFFFFFFFF, ord("O"), 1)))
    with pytest.raises(ProtocolError, match="unknown frame type 0x7a"):
        list(agent.FrameReader().feed(agent.frame(b"z", 0, b"")))
    for bad in (b"x banana", b"x 256", b"s 0", b"q 1", b"x -1", b"", b"x 0 0 0 0 12", b"x 0 0 0 0 -1 3",
                b"x 0 0 0 0 1 2 3"):
        with pytest.raises(ProtocolError):
            agent.parse_exit(bad)
    with pytest.raises(ProtocolError):
        agent.parse_failure(b"execve\x00NaN\x00x")
    with pytest.raises(ProtocolError):
        agent.parse_started(b"-1")
    many = agent.frame(b"O", 9, b"") * 10_000  # a flood of empty frames: parsed, nothing kept
    assert len(list(agent.FrameReader().feed(many))) == 10_000


def test_captured_output_is_capped_with_a_marker() -> None:
    buf = CappedBuffer(cap=10)
    for chunk in (b"0123", b"456789ab", b"cdef"):
        buf.extend(chunk)
    assert buf.value() == b"0123456789\n[minibox: output truncated, 6 bytes dropped after the first 10]\n"
    small = CappedBuffer(cap=10)
    small.extend(b"abc")
    assert small.value() == b"abc"


def test_qemu_command_line_follows_the_spec() -> None:
    spec = Spec(argv=["true"], limits=Limits(memory="100M", cpus=1.5 if (os.cpu_count() or 1) > 1 else 0.5))
    cfg = machine.MachineConfig(qemu="qemu", kernel="k", initrd="/dev/fd/3", cmdline=machine.kernel_cmdline(),
                                memory=machine.memory_bytes(spec), cpus=machine.vcpus(spec),
                                qmp_fd=4, virtiofs_fds=[("rootfs", 5)])
    argv = machine.qemu_argv(cfg)
    assert argv[argv.index("-m") + 1] == "100M"
    assert argv[argv.index("-smp") + 1] == str(2 if (os.cpu_count() or 1) > 1 else 1)
    assert "-nodefaults" in argv and "reboot=shutdown,shutdown=pause" in argv
    assert "virtio-mmio.force-legacy=false" in argv
    assert not any("netdev" in a for a in argv)  # network "none": no NIC at all
    cmdline = argv[argv.index("-append") + 1]
    assert "quiet" in cmdline and "cryptomgr.notests" in cmdline and "panic=-1" in cmdline


def test_a_bridged_vm_gets_a_tap_netdev_and_a_network_record() -> None:
    from minibox.vm.network import GuestNetwork, guest_mac, tap_name

    cfg = machine.MachineConfig(qemu="qemu", kernel="k", initrd="/dev/fd/3", cmdline="", memory=256 << 20,
                                tap_fd=7, mac=guest_mac("0123456789ab"))
    argv = machine.qemu_argv(cfg)
    assert argv[argv.index("-netdev") + 1] == "tap,id=n0,fd=7"  # an inherited fd: QEMU makes no tap
    assert "virtio-net-device,netdev=n0,mac=02:01:23:45:67:89" in argv  # virtio-mmio on microvm
    assert tap_name("0123456789ab") == "mbtap0123456789"
    config = agent.encode_config(Spec(argv=["true"]), [], network=GuestNetwork("eth0", "10.88.0.7", 24, "10.88.0.1"),
                                 files=[("/minibox/etc/hosts", "/etc/hosts")])
    assert b"Neth0\x0010.88.0.7\x0024\x0010.88.0.1\x00" in config
    assert config.endswith(b"B/minibox/etc/hosts\x00/etc/hosts\x00")


def test_the_plan_shares_the_rootfs_and_each_bind_and_mounts_them_in_the_guest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "app.conf"
    conf.write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    spec = Spec(argv=["true"], rootfs=str(root),
                mounts=[Mount.bind(str(data), "/data"), Mount.bind(str(conf), "/etc/app.conf", readonly=True),
                        Mount.tmpfs("/scratch", size="8M")])
    p = plan.plan_vm(spec, "virtiofs", lambda: pytest.fail("the Spec names its rootfs"))
    assert p.rootfs == str(root) and p.needs_virtiofs and not p.make_mount_points
    assert p.shares == (Share("rootfs", str(root), False), Share("mount0", str(data), False),
                        Share("mount1", str(tmp_path), True))  # a file: its directory is shared
    assert [(m.kind, m.tag, m.name, m.target, m.readonly) for m in p.guest_mounts] == [
        ("dir", "mount0", "", "/data", False), ("file", "mount1", "app.conf", "/etc/app.conf", True),
        ("tmpfs", "", "", "/scratch", False)]
    assert p.guest_mounts[2].size == str(8 << 20)
    assert p.modules == plan.GUEST_MODULES and p.packed_root is None


def test_the_plan_for_the_default_rootfs_is_read_only_with_a_private_tmp(tmp_path: Path) -> None:
    p = plan.plan_vm(Spec(argv=["true"]), "virtiofs", lambda: "/images/busybox")
    assert p.spec.readonly_rootfs and p.make_mount_points
    assert p.shares == (Share("rootfs", "/images/busybox", True),)
    assert [(m.kind, m.target) for m in p.guest_mounts] == [("tmpfs", "/tmp")]
    packed = plan.plan_vm(Spec(argv=["true"], rootfs=str(tmp_path)), "initramfs", lambda: "", ("virtio_net",))
    assert packed.shares == () and not packed.needs_virtiofs and packed.packed_root == str(tmp_path)
    assert packed.modules == ("virtio_mmio", "virtio_console", "virtio_net")  # no virtiofs module


def test_virtiofsd_runs_through_the_guard_without_mknod_fsetid_setfcap_or_xattrs() -> None:
    rw = virtiofs.virtiofsd_argv("/usr/lib/qemu/virtiofsd", 9, Share("rootfs", "/srv/root", False), "/g")
    assert rw[:4] == ["/g", "/srv/root", "--", "/usr/lib/qemu/virtiofsd"]  # nosuid,nodev bind + seccomp
    assert "--fd=9" in rw and "source=/srv/root" in rw and "no_xattr" in rw
    assert "modcaps=-mknod:-fsetid:-setfcap" in rw
    ro = virtiofs.virtiofsd_argv("/usr/lib/qemu/virtiofsd", 9, Share("rootfs", "/srv/root", True), "/g")
    assert ro == ["/g", "-r", *rw[1:]]  # the same, over a read-only bind


def test_the_planned_machine_config_wires_every_channel(tmp_path: Path) -> None:
    p = plan.plan_vm(Spec(argv=["true"], rootfs=str(tmp_path), limits=Limits(cpus=1)), "virtiofs", lambda: "")
    cfg = plan.machine_config(p, qemu="qemu", kernel="k", initrd="/dev/fd/3", accel="tcg", machine_type="microvm",
                              memory=256 << 20, channels=plan.ChannelFds(4, 5, (6, 7, 8)),
                              virtiofs_fds=[("rootfs", 9)])
    argv = machine.qemu_argv(cfg)
    assert "socket,id=qmp,fd=4" in argv and "socket,id=console,fd=5" in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-device" and "virtserialport" in argv[i + 1]] == [
        f"virtserialport,chardev=port{i},name={name}" for i, name in enumerate(machine.PORTS)]
    assert "socket,id=fs0,fd=9" in argv


@pytest.mark.parametrize("which", ["bzimage", "vmlinux"])
def test_an_explicit_kernel_path_finds_the_modules_of_its_own_release(which: str) -> None:
    # Spec(kernel=...) naming the provisioned kernel (its bzImage or the
    # extracted vmlinux) must describe the same kernel as the default: same
    # release, same module tree -- a guest booted without its modules cannot
    # mount a virtiofs rootfs (the bug: release "unknown", no modules).
    default = ensure_kernel()
    explicit = ensure_kernel(str(default.bzimage if which == "bzimage" else default.path))
    assert explicit.release == default.release
    assert explicit.modules_dir == default.modules_dir is not None
    assert explicit.pvh == default.pvh
