"""The bottom layer's run-time helpers, importable from every layer: devices, mixed precision and seeding
(:mod:`.devices`), the process group of ``torchrun`` (:mod:`.distributed`) and the versions a record names
(:mod:`.versions`). Nothing here imports another synthmed layer, apart from :mod:`synthmed.errors`."""
