-- one row per attribution run (attnwh attribute) and head: its causal importance (the drop of the target when
-- the head is ablated), the estimate's uncertainty, the head's stage, its rank in the run (1 = the largest
-- drop; ties to the lower layer, then head, as head_ranking orders an extraction run's heads), and the method's
-- settings and fit
select
    a.run_id,
    r.model,
    r.benchmark,
    a.layer,
    a.head,
    stage(a.layer, r.n_layers) as stage,
    r.n_layers,
    r.n_heads,
    r.n_kv_heads,
    a.score,
    -- a patterns fit's intervals are shown where drawn as today (Student's t over the samples with the bootstrap's
    -- standard error: extract.attribution.PATTERNS_INTERVAL); those of older fits are left out rather than shown
    -- (--refit draws them again): written before the bootstrap resampled the samples too (interval null), they were
    -- conditional on the samples, about half as wide as they should be; the bootstrap's percentiles ('patterns and
    -- samples') covered 83% at 5 samples, 91% at 16
    case when f.method = 'patterns' and f.interval is distinct from patterns_interval() then null else a.std_error end as std_error,
    case when f.method = 'patterns' and f.interval is distinct from patterns_interval() then null else a.ci_low end as ci_low,
    case when f.method = 'patterns' and f.interval is distinct from patterns_interval() then null else a.ci_high end as ci_high,
    row_number() over (partition by a.run_id order by a.score desc nulls last, a.layer, a.head) as rank,
    f.method,
    f.ablation,
    f.target,
    f.fit,
    f.alpha,
    f.n_conditions,
    f.n_samples,
    f.r2_heldout,
    f.spearman_heldout,
    f.r2_train,
    f.interval
from head_attributions as a
join attribution_fits as f using (run_id)
join stg_runs as r using (run_id)
