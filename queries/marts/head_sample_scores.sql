-- one row per head of one extraction run: the head's score in each sample, in sample order (samples
-- without the score left out), and the run's shape: what `attnwh heads export` writes
select
    m.layer,
    m.head,
    list(head_score($score, m) order by m.sample_idx)
        filter (where head_score($score, m) is not null) as scores,
    avg(head_score($score, m)) as mean_score,
    any_value(r.n_layers) as n_layers,
    any_value(r.n_heads) as n_heads,
    any_value(r.n_kv_heads) as n_kv_heads
from stg_head_metrics as m
join stg_runs as r using (run_id)
where m.run_id = $run_id and m.query = $query
group by m.layer, m.head
order by m.layer, m.head
