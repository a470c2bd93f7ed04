"""Our small helper package: config, import by name, seeding, devices, distributed and IO helpers.

Not the unrelated PyPI project of the same name. Submodules are imported where used so that
torch-free tools (data generation) do not pay for importing torch.
"""
__version__ = "1.0.0"
