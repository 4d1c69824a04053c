"""podlab: a Kubernetes pod on one machine, for kvm-manager's tests and demo.

Network namespaces stand in for the node and the pod, the base image is served from the node,
and kvm-manager runs in the pod as a container entrypoint would. Test infrastructure only:
it is not part of the kvm-manager package.
"""
