"""provisioner-worker: the Temporal worker that provisions, deletes and reconciles tenants."""
