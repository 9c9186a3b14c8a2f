-- one row per run and query: from which layer the final answer stays top-1 (per sample, then summarised)
with per_sample as (
    select
        run_id,
        model,
        benchmark,
        query,
        sample_idx,
        any_value(n_layers) as n_layers,
        -- the first layer after the last layer where the answer was not top-1 (0 if it always was)
        coalesce(max(layer) filter (where not at_top) + 1, 0) as settle_layer
    from stg_logit_lens
    group by run_id, model, benchmark, query, sample_idx
)
select
    run_id,
    model,
    benchmark,
    query,
    any_value(n_layers) as n_layers,
    count(*) as n_samples,
    median(settle_layer) as median_settle_layer,
    quantile_cont(settle_layer, 0.25) as q1_settle_layer,
    quantile_cont(settle_layer, 0.75) as q3_settle_layer,
    median(settle_layer) / any_value(n_layers) as median_settle_depth,
    avg(case when settle_layer < n_layers then 1.0 else 0.0 end) as share_settled_early
from per_sample
group by run_id, model, benchmark, query
order by run_id, query
