"""Paths of the local Compute Engine -> handler names on `ComputeResponses` (and the control
interface under /_ferry/, see infra/local/control_api.py)."""

from __future__ import annotations

import re

P = r"^/compute/v1/projects/(?P<project>[^/]+)"
Z = P + r"/zones/(?P<zone>[^/]+)"
I = Z + r"/instances/(?P<name>[^/]+)"

URLS = [
    ("GET", Z + r"/instances$", "list_instances"),
    ("POST", Z + r"/instances$", "insert_instance"),
    ("GET", I + r"$", "get_instance"),
    ("DELETE", I + r"$", "delete_instance"),
    ("POST", I + r"/stop$", "stop_instance"),
    ("POST", I + r"/start$", "start_instance"),
    ("POST", I + r"/setMetadata$", "set_metadata"),
    ("POST", I + r"/setLabels$", "set_labels"),
    ("GET", I + r"/getGuestAttributes$", "guest_attributes"),
    ("POST", I + r"/setTags$", "set_tags"),
    ("POST", I + r"/reset$", "reset_instance"),
    ("POST", I + r"/setDeletionProtection$", "set_deletion_protection"),
    ("GET", I + r"/serialPort$", "serial_port_output"),
    ("GET", P + r"$", "get_project"),
    ("GET", P + r"/global/networks$", "list_networks"),
    ("GET", P + r"/global/networks/(?P<net>[^/]+)$", "get_network"),
    ("GET", Z + r"/disks$", "list_disks"),
    ("GET", Z + r"/disks/(?P<disk>[^/]+)$", "get_disk"),
    ("GET", Z + r"/diskTypes$", "list_disk_types"),
    ("GET", Z + r"/diskTypes/(?P<dt>[^/]+)$", "get_disk_type"),
    ("GET", Z + r"/operations$", "list_zone_operations"),
    ("GET", P + r"/global/operations$", "list_global_operations"),
    ("GET", P + r"/aggregated/instances$", "aggregated_instances"),
    ("GET", Z + r"/operations/(?P<op>[^/]+)$", "get_zone_operation"),
    ("POST", Z + r"/operations/(?P<op>[^/]+)/wait$", "wait_zone_operation"),
    ("GET", P + r"/global/operations/(?P<op>[^/]+)$", "get_global_operation"),
    ("POST", P + r"/global/operations/(?P<op>[^/]+)/wait$", "wait_global_operation"),
    ("GET", P + r"/zones$", "list_zones"),
    ("GET", Z + r"$", "get_zone"),
    ("GET", P + r"/regions$", "list_regions"),
    ("GET", P + r"/regions/(?P<region>[^/]+)$", "get_region"),
    ("GET", Z + r"/machineTypes$", "list_machine_types"),
    ("GET", Z + r"/machineTypes/(?P<mt>[^/]+)$", "get_machine_type"),
    ("GET", Z + r"/acceleratorTypes$", "list_accelerator_types"),
    ("GET", Z + r"/acceleratorTypes/(?P<acc>[^/]+)$", "get_accelerator_type"),
    ("GET", P + r"/global/images/family/(?P<family>[^/]+)$", "image_from_family"),
    ("GET", P + r"/global/images/(?P<image>[^/]+)$", "get_image"),
    ("GET", P + r"/global/images$", "list_images"),
    ("GET", P + r"/global/firewalls$", "list_firewalls"),
    ("POST", P + r"/global/firewalls$", "insert_firewall"),
    ("GET", P + r"/global/firewalls/(?P<fw>[^/]+)$", "get_firewall"),
    ("DELETE", P + r"/global/firewalls/(?P<fw>[^/]+)$", "delete_firewall"),
]

COMPILED = [(method, re.compile(pattern), handler) for method, pattern, handler in URLS]


def route(method: str, path: str):
    """-> (handler name, path params) or (None, None); ('', None) if the path exists for another method."""
    other = False
    for m, rx, handler in COMPILED:
        match = rx.match(path)
        if match:
            if m == method:
                return handler, match.groupdict()
            other = True
    return ("" if other else None), None
