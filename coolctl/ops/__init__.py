"""What operators reach: the control protocol, the control API server and client, the durable store.

May import: coolctl.model only. It knows nothing of the runtime: the daemon implements its
ControlPlane."""
