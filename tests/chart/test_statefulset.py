"""The VM's StatefulSet: kvm-manager's environment contract, volumes and claims, probes and
shutdown, privileges, devices, sysctls and resources; one StatefulSet per VM."""

from __future__ import annotations

import itertools

import pytest

from podlab.lab import CAPABILITIES
from tests.chart.render import (
    DEFAULT_VM,
    SOURCE,
    VALUE_SETS,
    Rendered,
    container,
    env,
    env_values,
    mounted_volume,
    mounts,
    pod_spec,
    render,
    volumes,
    with_source,
)

DEFAULTS = render(VALUE_SETS["defaults"])
EVERYTHING = render(VALUE_SETS["everything"])
TWO_VMS = render(VALUE_SETS["two-vms"])
KVM = "devices.kubevirt.io/kvm"
TUN = "devices.kubevirt.io/tun"


# Always set: the volumes' mount points and the cloud-init files (a missing one is absent).
VOLUMES_ENV = {"IMAGE_DIR": "/image", "VM_DIR": "/vm", "RUN_DIR": "/run/kvmmgr"}
INPUTS_ENV = {
    f"{key.upper()}_PATH": f"/cloud-init/{key}"
    for key in ("userdata", "metadata", "networkdata", "vendordata")
}


def test_default_environment_follows_the_contract() -> None:
    assert env_values(DEFAULTS.statefulset()) == {
        **VOLUMES_ENV,
        "IMG_SOURCE": SOURCE,
        "VM_ACCEL": "auto",
        # From disk.size 20Gi: the volume less 8% + 128 MiB (test_virtual_hardware).
        "VM_DISK_SIZE": "18713M",
        "CONFIG_DRIVE_FORMAT": "configdrive",
        **INPUTS_ENV,
    }
    # Unset values leave kvm-manager's defaults: the VM's size follows the container's limits.
    assert "VNC_PASSWORD" not in env(DEFAULTS.statefulset())


def test_every_contract_value_reaches_its_variable() -> None:
    assert env_values(EVERYTHING.statefulset()) == {
        **VOLUMES_ENV,
        "IMG_SOURCE": SOURCE,
        "IMG_TARGET": "guest.qcow2",
        "IMG_SHA256": "ab" * 32,
        "IMG_RETRIES": "0",
        "IMG_CA_BUNDLE": "/etc/kvm-manager/ca/root.pem",
        "VM_ACCEL": "tcg",
        "VM_MEMORY": "2G",
        "VM_CPUS": "2",
        "VM_DISK_SIZE": "18G",
        "VM_DISK_POLICY": "rebase",
        "VM_MAC": "52:54:00:12:34:56",
        "VM_MACHINE": "q35",
        "VM_FIRMWARE": "uefi",
        "VM_SECURE_BOOT": "true",
        "VM_BALLOON": "true",
        "VM_DISK_BUS": "sata",
        "VM_NIC_MODEL": "e1000e",
        "VM_CPU_MODEL": "Westmere",
        "VM_SERIAL": "CZC1234XYZ",
        "VM_UUID": "4c4c4544-0042-3610-8030-b8c04f4d4b31",
        "VM_DATA_DISKS": "10G /vm/scratch.img /dev/kvmmgr-data1 /data/2/disk.img",
        "VM_IP": "10.99.0.2",
        "VM_GW": "10.99.0.1",
        "NAT_EXCLUDE": "tcp/9100 udp/5353",
        "NO_DHCP": "true",
        "DNSMASQ_OPTS": "--log-queries --dhcp-option=42,10.0.0.1",
        "READINESS": "tcp:3389",
        "CONFIG_DRIVE_FORMAT": "nocloud",
        **INPUTS_ENV,
        "DEBUG": "true",
        "POD_IFACE": "eth1",
    }
    # The CA bundle is the ConfigMap's key, as one file where IMG_CA_BUNDLE points.
    statefulset = EVERYTHING.statefulset()
    assert mounts(statefulset)["/etc/kvm-manager/ca"]["readOnly"] is True
    assert mounted_volume(statefulset, "/etc/kvm-manager/ca")["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "root.pem", "path": "root.pem"}],
    }


def test_the_image_and_pod_settings_come_from_values() -> None:
    spec = pod_spec(EVERYTHING.statefulset())
    assert container(EVERYTHING.statefulset())["image"] == "registry.example.com/kvm-manager:0.2.0"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "vm-runner"
    assert spec["priorityClassName"] == "vm-critical"
    assert spec["nodeSelector"] == {"kvm": "true"}
    assert spec["tolerations"][0]["key"] == "kvm"
    assert "podAntiAffinity" in spec["affinity"]
    template = EVERYTHING.statefulset()["spec"]["template"]["metadata"]
    assert template["annotations"]["example.com/note"] == "all values"
    assert template["labels"]["team"] == "a"
    assert "ServiceAccount" not in {m["kind"] for m in EVERYTHING.manifests}
    # Defaults: the chart's appVersion as tag, its own service account without an API token.
    assert container(DEFAULTS.statefulset())["image"] == "kvm-manager:0.1.0"
    assert pod_spec(DEFAULTS.statefulset())["serviceAccountName"] == DEFAULT_VM
    assert pod_spec(DEFAULTS.statefulset())["automountServiceAccountToken"] is False
    assert DEFAULTS.get("ServiceAccount", DEFAULT_VM)["automountServiceAccountToken"] is False


def test_extra_args_go_to_qemu_after_a_double_dash() -> None:
    assert container(DEFAULTS.statefulset())["args"] == ["run"]
    assert container(EVERYTHING.statefulset())["args"] == ["run", "--", "-device", "virtio-rng-pci"]


def test_volumes_run_dir_image_cache_and_vm_disk() -> None:
    statefulset = DEFAULTS.statefulset()
    assert set(mounts(statefulset)) == {"/run/kvmmgr", "/image", "/vm"}
    assert mounted_volume(statefulset, "/run/kvmmgr")["emptyDir"]["medium"] == "Memory"
    cache = mounted_volume(statefulset, "/image")["persistentVolumeClaim"]
    assert cache == {"claimName": f"{DEFAULT_VM}-image-cache"}
    # /vm is the per-pod claim from the volumeClaimTemplate, not a pod volume.
    assert mounts(statefulset)["/vm"]["name"] not in volumes(statefulset)
    (template,) = statefulset["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == mounts(statefulset)["/vm"]["name"]
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert template["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in template["spec"]


def test_the_vm_disk_claim_follows_values() -> None:
    web = TWO_VMS.statefulset(f"{DEFAULT_VM}-web")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert web["resources"]["requests"]["storage"] == "40Gi"
    assert web["storageClassName"] == "fast"
    # "-" asks for no storage class at all rather than the cluster's default.
    spec = EVERYTHING.statefulset()["spec"]["volumeClaimTemplates"][0]["spec"]
    assert spec["storageClassName"] == ""
    assert spec["accessModes"] == ["ReadWriteOncePod"]


def test_one_shared_image_cache_claim_kept_on_uninstall() -> None:
    (claim,) = TWO_VMS.all("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{DEFAULT_VM}-image-cache"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    for statefulset in TWO_VMS.all("StatefulSet"):
        volume = mounted_volume(statefulset, "/image")
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (claim,) = EVERYTHING.all("PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "nfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"


def test_an_existing_image_cache_claim_renders_none() -> None:
    rendered = render(VALUE_SETS["existing-objects"])
    assert rendered.all("PersistentVolumeClaim") == []
    volume = mounted_volume(rendered.statefulset(), "/image")
    assert volume["persistentVolumeClaim"]["claimName"] == "shared-images"


def test_probes_ask_kvm_manager_and_allow_a_long_download() -> None:
    main = container(DEFAULTS.statefulset())
    # Readiness follows READINESS (QEMU by default); startup and liveness restore in place
    # what heals (tests/netns/test_health.py), and restart the container for the rest.
    assert main["readinessProbe"]["exec"]["command"] == ["kvm-manager", "status", "--ready"]
    for probe in ("startupProbe", "livenessProbe"):
        assert main[probe]["exec"]["command"] == ["kvm-manager", "status", "--repair"], probe
    startup = main["startupProbe"]
    assert startup["periodSeconds"] == 10
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    longer = container(EVERYTHING.statefulset())["startupProbe"]
    assert longer["periodSeconds"] * longer["failureThreshold"] == 60 * 60


@pytest.mark.parametrize(("rendered", "timeout"), [(DEFAULTS, 60), (EVERYTHING, 120)])
def test_pre_stop_shuts_the_guest_down_within_the_grace_period(
    rendered: Rendered, timeout: int
) -> None:
    statefulset = rendered.statefulset()
    command = container(statefulset)["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["kvm-manager", "shutdown", "--timeout", str(timeout)]
    assert pod_spec(statefulset)["terminationGracePeriodSeconds"] > timeout


def test_not_privileged_by_default_and_only_the_proven_capabilities() -> None:
    context = container(DEFAULTS.statefulset())["securityContext"]
    assert context["privileged"] is False
    # The same set the container suite (tests/container) runs the image with.
    assert context["capabilities"] == {"drop": ["ALL"], "add": list(CAPABILITIES)}
    # As far toward the "restricted" profile as the VM allows (tests/container runs so).
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    privileged = render(VALUE_SETS["host-path-devices"]).statefulset()
    assert container(privileged)["securityContext"]["privileged"] is True


def test_pod_sets_the_namespaced_sysctls_kvm_manager_needs() -> None:
    context = pod_spec(EVERYTHING.statefulset())["securityContext"]
    assert context["sysctls"] == [
        {"name": "net.ipv4.ip_forward", "value": "1"},
        {"name": "net.ipv4.conf.all.route_localnet", "value": "1"},
    ]
    assert context["fsGroup"] == 107  # podSecurityContext is kept beside them
    off = render(with_source({"sysctls": {"enabled": False}})).statefulset()
    assert "securityContext" not in pod_spec(off)


def test_devices_from_the_device_plugin_by_default() -> None:
    statefulset = DEFAULTS.statefulset()
    limits = container(statefulset)["resources"]["limits"]
    assert (limits[KVM], limits[TUN]) == ("1", "1")
    assert not {"/dev/kvm", "/dev/net/tun"} & set(mounts(statefulset))
    other = container(render(VALUE_SETS["device-plugin"]).statefulset())["resources"]["limits"]
    assert {k: v for k, v in other.items() if "/" in k} == {
        KVM: "1",
        "squat.ai/tun": "1",
        "squat.ai/vhost-net": "1",
    }
    # An empty resource name requests nothing.
    none = render(with_source({"devices": {"kvmResource": "", "tunResource": ""}}))
    assert not any("/" in k for k in container(none.statefulset())["resources"]["limits"])


def test_devices_from_host_path_instead() -> None:
    statefulset = render(VALUE_SETS["host-path-devices"]).statefulset()
    for path in ("/dev/kvm", "/dev/net/tun"):
        assert mounted_volume(statefulset, path)["hostPath"] == {"path": path, "type": "CharDevice"}
    limits = container(statefulset)["resources"]["limits"]
    assert KVM not in limits and TUN not in limits


def test_resources_from_values_and_vm_size_only_when_given() -> None:
    resources = container(DEFAULTS.statefulset())["resources"]
    assert resources["requests"] == {"cpu": 1, "memory": "1536Mi"}
    assert resources["limits"]["memory"] == "1536Mi"
    assert not {"VM_MEMORY", "VM_CPUS"} & set(env(DEFAULTS.statefulset()))
    web = container(TWO_VMS.statefulset(f"{DEFAULT_VM}-web"))["resources"]
    assert (web["limits"]["cpu"], web["limits"]["memory"]) == (2, "4Gi")
    assert web["limits"][KVM] == "1"


def test_one_statefulset_per_vm_with_its_own_headless_service() -> None:
    names = [DEFAULT_VM, f"{DEFAULT_VM}-db", f"{DEFAULT_VM}-web"]
    assert sorted(TWO_VMS.names("StatefulSet")) == names
    assert TWO_VMS.statefulset(f"{DEFAULT_VM}-web")["spec"]["replicas"] == 3
    assert TWO_VMS.statefulset(f"{DEFAULT_VM}-db")["spec"]["replicas"] == 1
    for name in names:
        spec = TWO_VMS.statefulset(name)["spec"]
        headless = TWO_VMS.get("Service", spec["serviceName"])
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_selectors_of_one_release_never_overlap() -> None:
    statefulsets = TWO_VMS.all("StatefulSet")
    for own in statefulsets:
        selector = own["spec"]["selector"]["matchLabels"].items()
        assert selector <= own["spec"]["template"]["metadata"]["labels"].items()
    for one, other in itertools.permutations(statefulsets, 2):
        selector = one["spec"]["selector"]["matchLabels"].items()
        assert not selector <= other["spec"]["template"]["metadata"]["labels"].items()


def test_a_vms_entry_overrides_the_defaults_it_names() -> None:
    web = TWO_VMS.statefulset(f"{DEFAULT_VM}-web")
    db = TWO_VMS.statefulset(f"{DEFAULT_VM}-db")
    assert env_values(web)["IMG_SOURCE"] == "https://images.example.com/web.qcow2.xz"
    assert env_values(web)["POD_IFACE"] == "net1"
    assert "POD_IFACE" not in env_values(db)
    assert (env_values(db)["IMG_SOURCE"], env_values(db)["IMG_TARGET"]) == (
        "/image/db.raw",
        "db.raw",
    )
    assert env_values(db)["CONFIG_DRIVE_FORMAT"] == "nocloud"
    # Everything not overridden is inherited from the top level.
    assert env_values(TWO_VMS.statefulset())["CONFIG_DRIVE_FORMAT"] == "configdrive"
    assert container(db)["resources"] == container(TWO_VMS.statefulset())["resources"]


def test_the_default_vm_can_be_left_out() -> None:
    rendered = render(VALUE_SETS["only-vms"])
    assert rendered.names("StatefulSet") == [f"{DEFAULT_VM}-solo"]
    assert rendered.statefulset(f"{DEFAULT_VM}-solo")["spec"]["replicas"] == 2
    # A vms entry can be switched off too.
    off = render(with_source({"vms": {"solo": {"enabled": False}}}))
    assert off.names("StatefulSet") == [DEFAULT_VM]
