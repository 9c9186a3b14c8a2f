-- Every masking condition that flipped answers: how many each way, and the first flipped samples, for the
-- report's links from the masking page to those samples.
with per_condition as (
    select
        run_id,
        condition_id,
        count(*) filter (where direction = 'correct_to_wrong') as correct_to_wrong,
        count(*) filter (where direction = 'wrong_to_right') as wrong_to_right,
        list(sample_key order by sample_idx)[1:$max_samples] as sample_keys
    from answer_flips
    where kind = 'mask'
    group by run_id, condition_id
),
final as (
    select
        m.model,
        m.benchmark,
        p.run_id,
        p.condition_id,
        m.strategy,
        m.stage,
        m.k,
        m.seed,
        m.mode,
        p.correct_to_wrong,
        p.wrong_to_right,
        p.sample_keys
    from per_condition as p
    join stg_mask_conditions as m using (run_id, condition_id)
)
select * from final
order by model, benchmark, run_id, condition_id
