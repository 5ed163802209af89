"""Provisioning GPU VMs on Compute Engine (and on the local emulation of it in infra.local)."""
