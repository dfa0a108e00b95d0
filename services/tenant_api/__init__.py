"""tenant-api: the gRPC front of Tenantry."""
