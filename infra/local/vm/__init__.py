"""The runtime of one local VM: a directory as its disk, a real SSH server on 127.0.0.1
(asyncssh in-process, or the system's OpenSSH sshd), a per-VM metadata server, the startup
script, and every process started on it tracked so that stop() ends them all.

    from infra.local.vm import VmSpec, LocalVm
    vm = LocalVm(VmSpec(name=..., zone=..., project=..., disk_dir=path, metadata={...},
                        labels={...}, env={"STORAGE_EMULATOR_HOST": url}, ssh_mode="asyncssh"))
    vm.start()          # returns once SSH listens (with spec.guest_agent_delay_s: that long later,
                        # vm.wait_booted()); the startup script runs in background
    vm.ssh_port, vm.host_key_public, vm.metadata_host
    vm.update_metadata(items); vm.set_preempted(); vm.set_maintenance_event("TERMINATE_ON_HOST_MAINTENANCE")
    vm.drop_connections(); vm.stop(); vm.pids()

See docs/local-vms.md.
"""

__all__ = ["LocalVm", "VmSpec", "VmError", "SSH_MODES", "parse_ssh_keys", "openssh_available"]
_FROM = {"LocalVm": "runtime", "VmSpec": "spec", "VmError": "spec", "SSH_MODES": "spec", "parse_ssh_keys": "spec"}


def __getattr__(name: str):
    """Loaded on first use: a CLI command that only needs `processes` (every local command,
    through infra.local.service) does not pay for the VM runtime's imports (PEP 562)."""
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_FROM[name]}"), name)
    globals()[name] = value
    return value


def openssh_available() -> str | None:
    """Path of the system sshd, or None (then ssh_mode='openssh' cannot work)."""
    from .sshd_openssh import find_sshd

    return find_sshd()
