"""Data preparation: raw dataset files -> the raw database (`database.py`, written by `ntu.py`, `ucla.py`,
`pku.py`) -> fixed-length training arrays (`preprocess.py`); the demo's synthetic clips (`demo.py`, their
skeleton in `demo_body.py`) take the NTU path (`demo_arrays.py`). The command lines are thin entry points:
tools/ntu_gendata.py, tools/ucla_gendata.py, tools/pku_gendata.py, feeder/preprocess_ntu.py and
`python -m feeder.prepare.demo`.
The converters and the database writer import no torch."""
