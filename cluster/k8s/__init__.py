"""The `kubernetes` provider: manifests (network.py, manifests.py), Chaos Mesh faults (chaos.py), the pod's
init step (pod_init.py) and applying them with the official client (apply.py)."""
