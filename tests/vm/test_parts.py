"""The VM path's parts on their own: accelerator probe, kernel, initramfs, protocol, QEMU argv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from minibox.spec import Limits, Spec
from minibox.vm import accel, agent, initramfs, machine
from minibox.vm.kernel import ensure_kernel, has_pvh_note
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
    assert agent.parse_failure(b"execve\x002\x00/bin/nope") == ("execve", 2, "/bin/nope")


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
