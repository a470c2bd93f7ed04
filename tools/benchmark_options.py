"""The speed options of tools/benchmark.py: which of them run on this device, and which measure only the
encoder figure.
"""
from torchlight.util import cpu_amp_is_fast


def encoder_only(option, args, device):
    """Whether `option` measures the encoder figure only: compile on CPU, unless --compile_all.

    On CUDA every figure of every option is measured (compile included): that is where it is meant to help.
    """
    return bool(option.get("compile")) and device.type != "cuda" and not args.compile_all


def speed_options(device, quick, wanted=()):
    """Speed options runnable here: {name: processor config keys}, and {name: why skipped}.

    On CPU, compile runs only when named in `wanted`: inductor's code measured slower than eager
    there (75 vs 137 GFLOP/s, 2-core Xeon) and costs over a minute to compile.
    """
    options, skipped = {"fp32": {}, "channels_last": {"channels_last": True}}, {}
    if device.type == "cuda":
        options["tf32"] = {"tf32": True}
    for amp in ("bf16", "fp16"):
        if device.type == "cpu" and not cpu_amp_is_fast(amp):
            why = "its fp16 conv backward is a reference kernel" if amp == "fp16" else "no native bf16 kernels"
            skipped[amp] = f"slower than fp32 on this CPU: {why}"
        else:
            options[amp] = {"amp": amp}
    if quick:
        skipped["compile"] = "--quick (compiling takes minutes)"
    elif device.type == "cpu" and "compile" not in wanted:
        skipped["compile"] = "CPU: slower than eager here; --options compile measures it"
    else:
        options["compile"] = {"compile": True}
    options["device_augment"] = {"device_augment": True}
    # MoCo's fused_queries (default: fused on CUDA only), each way: one encoder call per step or per pass.
    options["fused"], options["separate"] = {"fused_queries": True}, {"fused_queries": False}
    combined = {"device_augment": True}  # the options expected to help here, together
    if "bf16" in options:
        combined["amp"] = "bf16"
    if device.type == "cuda":
        combined.update(compile=True, channels_last=True)
    options["combined"] = combined
    return options, skipped
