-- one row per run, query and layer of the logit lens: how far the final answer is from the top at each layer
select
    run_id,
    model,
    benchmark,
    query,
    layer,
    any_value(n_layers) as n_layers,
    any_value(depth) as depth,
    count(*) as n_samples,
    quantile_cont(target_rank, 0.25) as rank_q1,
    median(target_rank) as rank_median,
    quantile_cont(target_rank, 0.75) as rank_q3,
    avg(case when at_top then 1.0 else 0.0 end) as share_at_top,
    avg(target_prob) as mean_target_prob
from stg_logit_lens
group by run_id, model, benchmark, query, layer
order by run_id, query, layer
