-- one row per run and decoder layer: normalised depth and stage
-- depth = layer / (n_layers - 1), for comparing models of different depth
-- stage: early / mid / late (32 layers: 0-9, 10-19, 20-31; 40 layers: 0-12, 13-26, 27-39; otherwise thirds, rounded)
with shapes as (
    select
        run_id,
        n_layers,
        case n_layers when 32 then 10 when 40 then 13 else cast(round(n_layers / 3) as integer) end as mid_start,
        case n_layers when 32 then 20 when 40 then 27 else cast(round(2 * n_layers / 3) as integer) end as late_start
    from runs
    where n_layers is not null
)
select
    s.run_id,
    cast(l.layer as smallint) as layer,
    s.n_layers,
    case when s.n_layers > 1 then l.layer / (s.n_layers - 1) else 0 end as depth,
    case when l.layer < s.mid_start then 'early' when l.layer < s.late_start then 'mid' else 'late' end as stage
from shapes as s, lateral (select unnest(range(s.n_layers)) as layer) as l
