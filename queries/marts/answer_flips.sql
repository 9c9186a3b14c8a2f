-- one row per sweep run, condition and sample whose answer turned wrong or right against the run's baseline
-- (condition 0) on the same sample: both parsed answers, the direction, and what the condition did (its kind,
-- settings, the heads it acted on and the run that ranked them). The samples behind sweep_accuracy's
-- correct_to_wrong and wrong_to_right counts; the report links each masking condition to them.
with results as (
    select *
    from stg_sweep_results
    where status = 'ok' and correct is not null
),
flips as (
    select
        c.run_id,
        c.condition_id,
        c.sample_idx,
        c.sample_key,
        c.gold,
        b.parsed as baseline_parsed,
        c.parsed,
        case when b.correct then 'correct_to_wrong' else 'wrong_to_right' end as direction
    from results as c
    join results as b on b.run_id = c.run_id and b.condition_id = 0 and b.sample_idx = c.sample_idx
    where c.condition_id <> 0 and c.correct <> b.correct
),
final as (
    select
        f.run_id,
        s.model,
        s.benchmark,
        s.kind,
        f.condition_id,
        s.settings,
        s.ranking_run_id,
        s.ranking_score,
        s.heads,
        f.sample_idx,
        f.sample_key,
        f.gold,
        f.baseline_parsed,
        f.parsed,
        f.direction
    from flips as f
    join stg_sweep_conditions as s using (run_id, condition_id)
)
select * from final
order by model, benchmark, run_id, condition_id, sample_idx
