-- one row per model and pair of benchmarks whose extraction runs asked the same questions (as sets: the same
-- sample keys, question texts, options and gold answers), and whether each was swept: a masking sweep of one
-- answers for the other (the toy zoo sweeps toy-shapes-choice, not toy-shapes-region, which adds only boxes)
with asked as (
    select distinct r.model, r.benchmark, s.sample_key, s.question, s.choices, s.gold
    from stg_samples as s
    join stg_runs as r using (run_id)
    where r.kind = 'extract'
),
question_sets as (
    select
        model,
        benchmark,
        count(*) as n_samples,
        md5(string_agg(to_json({'key': sample_key, 'question': question, 'choices': choices, 'gold': gold})::varchar, chr(10) order by sample_key, question)) as digest
    from asked
    group by model, benchmark
),
swept as (
    select distinct model, benchmark
    from stg_runs
    where kind = 'mask'
),
final as (
    select
        a.model,
        a.benchmark,
        b.benchmark as same_as,
        a.n_samples,
        sa.benchmark is not null as benchmark_swept,
        sb.benchmark is not null as same_as_swept
    from question_sets as a
    join question_sets as b on b.model = a.model and b.digest = a.digest and b.benchmark <> a.benchmark
    left join swept as sa on sa.model = a.model and sa.benchmark = a.benchmark
    left join swept as sb on sb.model = b.model and sb.benchmark = b.benchmark
)
select * from final
order by model, benchmark, same_as
