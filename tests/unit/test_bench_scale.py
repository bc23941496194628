"""The scale benchmark's arithmetic (bench/scale.py): Slurm's jobcomp lines, the movers' result lines,
what a stage's tasks cost beyond their work, and the extrapolation model, on numbers small enough to check
by hand."""

from __future__ import annotations

import pytest

from bench.scale import (
    MB,
    Cluster,
    Corpus,
    Rates,
    StageMeasure,
    array_stage_s,
    extrapolate,
    linear_rate,
    makespan,
    parse_jobcomp,
    parse_results,
    parse_tokenize_done,
    projected_span_s,
    slurm_use,
    task_loads,
)


def jobcomp_line(job: int, name: str, state: str, start: str, end: str, array: tuple[int, int] | None) -> str:
    """A line as Slurm's jobcomp/filetxt writes it (times to the second, array fields for array tasks)."""
    fields = [
        f"JobId={job} UserId=root(0) GroupId=root(0) Name={name} JobState={state} Partition=debug",
        f"TimeLimit=UNLIMITED StartTime=2026-12-03T{start} EndTime=2026-12-03T{end} NodeList=node1",
        "NodeCnt=1 ProcCnt=1 WorkDir=/x ReservationName= Tres=cpu=1 Account= QOS= WcKey= Cluster=unknown",
        f"SubmitTime=2026-12-03T{start} EligibleTime=2026-12-03T{start}",
    ]
    if array:
        fields.append(f"ArrayJobId={array[0]} ArrayTaskId={array[1]}")
    fields.append("DerivedExitCode=0:0 ExitCode=0:0 ")
    return " ".join(fields)


# two tasks of array job 40 (the last task carries the array's own id, as Slurm writes it), a plain job,
# and someone else's job
JOBCOMP = "\n".join(
    [
        jobcomp_line(41, "nxf-fetch-r1", "COMPLETED", "11:00:00", "11:00:02", (40, 0)),
        jobcomp_line(40, "nxf-fetch-r1", "COMPLETED", "11:00:01", "11:00:04", (40, 1)),
        jobcomp_line(42, "nxf-merge-r1", "FAILED", "11:01:00", "11:01:07", None),
        jobcomp_line(43, "wrap", "COMPLETED", "11:01:00", "11:01:01", None),
        "garbage line",
    ]
)


def test_jobcomp_records_by_name_with_array_tasks_counted_to_their_job():
    records = parse_jobcomp(JOBCOMP, names={"nxf-fetch-r1", "nxf-merge-r1"})
    assert [r.job_id for r in records] == [41, 40, 42]
    fetch = slurm_use([r for r in records if r.name == "nxf-fetch-r1"])
    assert (fetch.jobs, fetch.array_tasks, fetch.records) == (1, 2, 2)
    assert fetch.task_wall_s == 5.0  # 2 s + 3 s
    assert fetch.span_s == 4.0  # 11:00:00 -> 11:00:04
    assert fetch.all_completed
    merge = slurm_use([r for r in records if r.name == "nxf-merge-r1"])
    assert (merge.jobs, merge.array_tasks, merge.states) == (1, 0, {"FAILED": 1})
    assert not merge.all_completed
    assert len(parse_jobcomp(JOBCOMP)) == 4


def test_no_records_is_not_all_completed():
    use = slurm_use([])
    assert (use.jobs, use.span_s, use.mean_wall_s, use.all_completed) == (0, 0.0, 0.0, False)


def test_mover_result_lines_and_tokenizer_done_lines():
    log = (
        "neoxflow fetch: array task 3 of 1001 (job 9) on host\n"
        'NEOXFLOW_RESULT {"bytes": 2048, "name": "a", "seconds": 0.5, "status": "fetched"}\n'
        "NEOXFLOW_RESULT {not json\n"
        'NEOXFLOW_RESULT {"bytes": 10, "name": "b", "seconds": 0.1, "status": "skipped"}\n'
    )
    assert [(r["name"], r["bytes"], r["status"]) for r in parse_results(log)] == [
        ("a", 2048, "fetched"),
        ("b", 10, "skipped"),
    ]
    text = (
        "[preprocess_data] 100 documents, 5000 tokens, 1.00 MB/s, 0.010 M tokens/s, 0.4 s\n"
        "[preprocess_data] 120 documents, 6100 tokens, 1.10 MB/s, 0.011 M tokens/s, 0.6 s (done)\n"
        "[preprocess_data] 5 documents, 750 tokens, 0.10 MB/s, 0.100 M tokens/s, 0.0 s (done)\n"
    )
    assert parse_tokenize_done(text) == [
        {"documents": 120, "tokens": 6100, "seconds": 0.6},
        {"documents": 5, "tokens": 750, "seconds": 0.0},
    ]


def test_stage_overhead_is_slot_time_minus_work():
    records = parse_jobcomp(JOBCOMP, names={"nxf-fetch-r1"})
    # 2 tasks, 2 at a time, span 4 s: 4 s of slot time per task; 1 s of work in all -> 0.5 s per task
    m = StageMeasure("fetch", slurm_use(records), slots=2, lines=2, work_units=2 * MB, work_s=1.0)
    assert m.work_per_task_s == 0.5
    assert m.slot_s_per_task == 4.0
    assert m.overhead_per_task_s == 3.5
    assert m.in_task_overhead_s == 2.0  # mean wall 2.5 s - 0.5 s
    assert m.dispatch_gap_s == 1.5  # 4.0 - 2.5
    assert m.line_overhead_s == 2.0  # (5 s of walls - 1 s of work) / 2 lines
    strided = StageMeasure("fetch", slurm_use(records), slots=2, lines=8, work_units=0, work_s=1.0)
    assert strided.line_overhead_s == 0.5  # 4 lines per task: each pays a quarter of the task's overhead
    # with a rate from a large shard: 2 MiB at 4 MiB/s is 0.5 s of the 5 s of walls, the rest is fixed
    assert m.line_overhead_at(4 * MB) == 2.25
    assert m.line_overhead_at(None) == m.line_overhead_s
    assert m.rate == 2 * MB
    idle = StageMeasure("fetch", slurm_use(records), slots=2, lines=2, work_units=0, work_s=0)
    assert idle.rate is None


def test_task_loads_follow_the_manifest_stride():
    # 5 lines on a limit of 3 tasks: task 0 takes lines 0 and 3, task 1 lines 1 and 4, task 2 line 2
    assert task_loads([1, 2, 3, 4, 5], 3) == [5, 7, 3]
    assert task_loads([1, 2], 1001) == [1, 2]
    # 1025 lines on Slurm's default limit: 24 tasks take two lines
    loads = task_loads([1.0] * 1025, 1001)
    assert len(loads) == 1001 and loads.count(2.0) == 24 and loads.count(1.0) == 977
    with pytest.raises(ValueError):
        task_loads([1.0], 0)


def test_makespan_is_full_cluster_or_longest_task():
    assert makespan([10] * 8, 2) == 40  # full: 80 s of work on 2 slots
    assert makespan([10, 10, 50], 100) == 50  # waiting for the longest
    assert makespan([], 4) == 0
    with pytest.raises(ValueError):
        makespan([1], 0)


def test_array_stage_adds_the_overheads_per_line_and_per_task():
    cluster = Cluster(nodes=1, cpus_per_node=2, max_array_size=3)
    # loads [5, 7, 3] + 1 s each = [6, 8, 4]: 18 s on 2 slots -> 9 s (more than the longest, 8 s)
    assert array_stage_s([1, 2, 3, 4, 5], 0.0, 1.0, cluster) == 9.0
    # + 0.5 s per line: tasks of 2, 2 and 1 lines -> [7, 9, 4.5]: 20.5 s on 2 slots -> 10.25 s
    assert array_stage_s([1, 2, 3, 4, 5], 0.5, 1.0, cluster) == 10.25
    # one slot per task: the longest task
    assert array_stage_s([1, 2, 3, 4, 5], 0.5, 1.0, Cluster(nodes=3, cpus_per_node=1)) == 7.5
    assert Cluster(nodes=2, cpus_per_node=4, parallelism=3).slots == 3
    assert Cluster(nodes=2, cpus_per_node=4).slots == 8


def test_extrapolation_by_hand():
    corpus = Corpus(
        shards=4, documents=400, tokens=4000, gzip_bytes=4 * 10 * MB, token_bytes=2, tokenizer_bytes=0
    )
    rates = Rates(
        fetch_mb_s=1.0,
        stage_mb_s=2.0,
        tokens_per_s=100.0,
        merge_mb_s=0.001,
        line_overhead_s={"fetch": 0.5, "tokenize": 2.0},
        task_overhead_s={"fetch": 0.5},
        merge_fixed_s=3.0,
        airflow_s=7.0,
    )
    cluster = Cluster(nodes=1, cpus_per_node=2, max_array_size=1001, link_mb_s=1000.0)
    real = extrapolate(corpus, cluster, rates)
    # fetch: 4 shards of 10 s + 1 s (and an empty tokenizer line of 1 s) on 2 slots: 45 / 2 = 22.5 s
    assert real["fetch"] == pytest.approx(22.5)
    assert real["stage"] == pytest.approx(10.0)  # 4 x 5 s on 2 slots
    assert real["tokenize"] == pytest.approx(24.0)  # 4 x (1000 / 100 + 2) on 2 slots
    merged_mb = (4000 * 2 + 400 * 20) / MB
    assert real["merge_validate"] == pytest.approx(3.0 + merged_mb / 0.001)
    assert real["airflow"] == 7.0
    assert real["total"] == pytest.approx(sum(v for k, v in real.items() if k != "total"))


def test_fetch_is_bounded_by_the_link_and_stage_by_the_file_system():
    corpus = Corpus(shards=4, documents=4, tokens=4, gzip_bytes=4 * 10 * MB, tokenizer_bytes=0)
    rates = Rates(fetch_mb_s=100.0, stage_mb_s=100.0, tokens_per_s=1e6, merge_mb_s=100.0)
    wide = Cluster(nodes=4, cpus_per_node=1, link_mb_s=1e6)
    assert extrapolate(corpus, wide, rates)["fetch"] == pytest.approx(0.1)  # one wave of 10 MiB at 100
    slow_link = Cluster(nodes=4, cpus_per_node=1, link_mb_s=4.0, storage_mb_s=2.0)
    real = extrapolate(corpus, slow_link, rates)
    assert real["fetch"] == pytest.approx(10.0)  # 40 MiB through 4 MiB/s
    assert real["stage"] == pytest.approx(20.0)  # 40 MiB into 2 MiB/s


def test_the_default_array_limit_doubles_the_longest_task_of_real_c4():
    rates = Rates(fetch_mb_s=100.0, stage_mb_s=100.0, tokens_per_s=1e6, merge_mb_s=500.0)
    corpus = Corpus()
    stock = Cluster(nodes=16, cpus_per_node=96, max_array_size=1001)
    larger = Cluster(nodes=16, cpus_per_node=96, max_array_size=2000)
    shard_s = corpus.tokens / corpus.shards / 1e6
    assert extrapolate(corpus, stock, rates)["tokenize"] == pytest.approx(2 * shard_s)
    assert extrapolate(corpus, larger, rates)["tokenize"] == pytest.approx(shard_s)
    few = Cluster(nodes=1, cpus_per_node=8, max_array_size=1001)
    assert extrapolate(corpus, few, rates)["tokenize"] == pytest.approx(1024 * shard_s / 8)


def test_extrapolation_refuses_a_missing_rate():
    with pytest.raises(ValueError, match="tokens_per_s"):
        extrapolate(Corpus(), Cluster(), Rates(fetch_mb_s=1, stage_mb_s=1, tokens_per_s=0, merge_mb_s=1))


def test_a_stage_cut_short_is_projected_at_its_pace():
    assert projected_span_s(100.0, 250, 1001) == pytest.approx(400.4)
    assert projected_span_s(0.0, 0, 1001) is None


def test_linear_rate_cancels_the_fixed_part():
    # 2 s fixed + 100 units/s: 100 units in 3 s, 800 units in 10 s
    rate, fixed = linear_rate((100, 3.0), (800, 10.0))
    assert rate == pytest.approx(100.0)
    assert fixed == pytest.approx(2.0)
    with pytest.raises(ValueError):
        linear_rate((100, 3.0), (800, 2.0))
    with pytest.raises(ValueError):
        linear_rate((800, 3.0), (100, 10.0))
