"""Role: kubelet device plugin (node agent).

* :mod:`.agent` composes the role (``DevicePluginAgent``, ``AgentConfig``);
* :mod:`.backend` is the hardware port (``DeviceBackend``), implemented by
  :mod:`.backends.nvml` (pynvml, or :mod:`.backends.nvml_replay` for tests) and :mod:`.backends.mock`;
* :mod:`.virtual` turns GPUs into kubelet IDs and registration entries; :mod:`.state` holds health;
* :mod:`.service` (gRPC ``v1beta1.DevicePlugin``) and :mod:`.registration` (kubelet.sock);
* :mod:`.allocate` (HAMi-core env/mounts), :mod:`.cdi` (CDI spec), :mod:`.podlookup` (which pod an
  Allocate is for: ``PendingPodSource``, ``AllocationRecorder`` and the ``PodApi``/``NodeApi`` ports),
  :mod:`.kubeapi` (those ports over ``hami.k8s``), :mod:`.memkube` (in memory);
* :mod:`.annotator` (``hami.io/node-nvidia-register``) and :mod:`.capacity` (``--mock-capacity``).
"""
