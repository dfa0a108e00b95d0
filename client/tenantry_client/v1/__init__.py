"""The tenantry.v1 contract's generated messages and stubs, a copy of
services/tenantry/v1 made by `make proto` with its imports pointed here, so
this distribution needs nothing of the server's. Do not edit the *_pb2* files."""
