from fewstep.bench.report import format_peer_comparison, peer_comparison


def _row(method, seed, t, overhead, rmse, teacher="g", nfe=4):
    return {"method": method, "teacher": teacher, "nfe_target": nfe, "seed": seed,
            "time_per_sample_s": t, "overhead_per_step_s": overhead,
            "metrics": {"ode_rmse": rmse}}


def test_ratios_are_medians_over_matched_cases():
    rows = [_row("dpmpp_2m", s, 1.0, 0.1, 0.5) for s in range(3)]
    rows += [_row("diffusers:dpmpp_2m", s, 2.0 * (s + 1), 0.4, 0.5) for s in range(3)]
    rows += [_row("dpmpp_2m", 9, 1.0, 0.1, 0.5)]  # no peer twin: not matched
    (c,) = peer_comparison(rows)
    assert c["cases"] == 3
    assert c["time_ratio"] == 1.0 / 4.0  # median of 1/2, 1/4, 1/6
    assert c["overhead_ratio"] == 0.25 and c["metric_ratio"] == 1.0
    assert "dpmpp_2m" in format_peer_comparison([c])


def test_no_pairs():
    assert peer_comparison([_row("heun", 0, 1.0, 0.1, 0.5)]) == []
    assert "no fewstep/peer pairs" in format_peer_comparison([])
