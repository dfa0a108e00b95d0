"""Code shared by tenant-api and provisioner-worker: settings, database models
and sessions, the workflow contract and the generated protobuf code."""
