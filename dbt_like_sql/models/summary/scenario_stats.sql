with scenarios as (
    select * from {{ ref('stg_soda_scenarios') }}
),

names as (
    select person_x as name from scenarios
    union
    select person_y as name from scenarios
)

select
    (select count(*) from scenarios) as n_scenarios,
    (select count(distinct scenario_id) from scenarios) as n_distinct_scenario_ids,
    (select count(distinct person_x) from scenarios) as n_distinct_person_x,
    (select count(distinct person_y) from scenarios) as n_distinct_person_y,
    (select count(name) from names) as n_distinct_names,
    (select avg(n_words) from scenarios) as mean_narrative_words,
    (select median(n_words) from scenarios) as median_narrative_words,
    (select min(n_words) from scenarios) as min_narrative_words,
    (select max(n_words) from scenarios) as max_narrative_words
