"""kvm-manager: run a legacy VM inside a Kubernetes pod, as if the VM were the pod."""

__version__ = "0.1.0"
