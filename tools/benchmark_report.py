"""The report of tools/benchmark.py: the figures derived from the measured rows, the text table and the
closing lines printed after it.
"""


def summarize(result):
    """Add the encoder's fraction of the matmul throughput per dtype, the fastest option and its speed-up."""
    rows, matmul = result["options"], result["matmul_gflops"]
    for dtype in ("fp32", "bf16"):  # the encoder's forward+backward GFLOP/s over the matmul's, same dtype
        row = rows.get(dtype, {})
        result[f"{dtype}_fraction_of_matmul"] = (row["encoder_gflops"] / matmul[dtype]
                                                 if row.get("encoder_gflops") and dtype in matmul else None)
    key = "pretrain_skelemixclr_plus"
    ours = {k: r[key] for k, r in rows.items() if k != "baseline" and r.get(key)}
    result["fastest_option"] = max(ours, key=ours.get) if ours else None
    result["speedup_vs_baseline"] = (ours[result["fastest_option"]] / rows["baseline"][key]
                                     if ours and rows.get("baseline", {}).get(key) else None)


def table(result):
    """The results as a fixed-width text table."""
    heads = ["option", "enc s", "enc GF/s", "CLR/s", "Mix/s", "Mix+/s", "linear/s", "infer/s", "load/s", "peak MB"]
    keys = ["encoder_fwd_bwd_s", "encoder_gflops", "pretrain_skeletonclr", "pretrain_skelemixclr",
            "pretrain_skelemixclr_plus", "linear_eval", "inference", "data_loading", "peak_memory_mb"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, row in result["options"].items():
        cells = ["-" if row.get(k) is None else (f"{row[k]:.3g}" if row[k] < 100 else f"{row[k]:.0f}")
                 + ("*" if k in row.get("same_as_fp32", ()) else "") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(row.get("same_as_fp32") for row in result["options"].values()):
        lines.append("* the fp32 path (the option does not change it), not measured again")
    return "\n".join(lines)


def print_report(result):
    """The table, then the matmul fractions, the speed-up over the baseline and the run's duration."""
    print(table(result))
    for dtype in ("fp32", "bf16"):
        if result[f"{dtype}_fraction_of_matmul"]:
            print(f"{dtype} encoder forward+backward: {result[f'{dtype}_fraction_of_matmul']:.2f} of the {dtype} "
                  "matmul throughput", flush=True)
    if result["speedup_vs_baseline"]:
        print(f"SkeleMixCLR+ step: {result['fastest_option']} is {result['speedup_vs_baseline']:.2f}x the baseline")
    print(f"benchmark took {result['seconds']:.0f} s")
