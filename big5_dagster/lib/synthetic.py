"""Deterministic synthetic seed corpora for the offline ``tiny`` profile.

``generate_posts`` stands in for the PsychGenerator posts (METHOD.md section 2): each post
has one author whose five trait z-scores are drawn from a multivariate normal with the
published human intercorrelations (lib/human_reference.py), and its wording carries those
scores through trait-marker phrase banks, so a text classifier can learn the trait levels
and the experts have a real signal to imitate. ``generate_scenarios`` stands in for SODA:
short two-person social situations with names filled in.

Design of the trait signal:
- Each trait's pole (sign of z) picks its bank; the chance of a marker clause and of a
  short marker tag both grow with |z|, so a near-average author writes mostly neutral
  text and an extreme one is unmistakable, while every post mixes several traits.
- Posts open with a neutral opener and an everyday event (topic) most of the time, so
  the first five words are usually neutral and the signal sits in the rest: the experts
  are trained on "first 5 words -> rest of the post".
- A few style habits ride on top (casual lowercase without apostrophes for low
  conscientiousness, exclamation marks for high extraversion, trailing dots for high
  neuroticism), again with a probability that grows with |z|.

The banks are written for this project. What inspired them is cited above each bank:
- Yarkoni, T. (2010). Personality in 100,000 words: A large-scale analysis of
  personality and word use among bloggers. Journal of Research in Personality, 44(3),
  363-373.
- Schwartz, H. A., et al. (2013). Personality, gender, and age in the language of social
  media: The open-vocabulary approach. PLoS ONE, 8(9), e73791 (the word clouds of
  words and phrases most correlated with each trait pole, from 75,000 Facebook users).
- Pennebaker, J. W., & King, L. A. (1999). Linguistic styles: Language use as an
  individual difference. Journal of Personality and Social Psychology, 77(6), 1296-1312.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd

from big5_dagster.lib.human_reference import HUMAN_TRAIT_CORRELATIONS
from big5_dagster.lib.traits import TRAITS

MIN_POST_WORDS = 12
MAX_POST_WORDS = 40
MAX_MARKER_CLAUSES = 3
MAX_MARKER_TAGS = 2
MAX_SENTENCES = 3


@dataclass(frozen=True)
class PoleMarkers:
    """Language of one pole of one trait: full first-person clauses and short tags."""

    clauses: tuple[str, ...]
    tags: tuple[str, ...]


# --- Openness ---------------------------------------------------------------------------
# High: art, poetry, universe, humans, music, dreams, soul, writing (Yarkoni 2010;
# Schwartz et al. 2013); longer words and tentative wording ("perhaps", "wonder")
# (Pennebaker & King 1999).
_OPENNESS_HIGH = PoleMarkers(
    clauses=(
        "I spent an hour at the museum staring at one abstract painting",
        "I keep thinking about how strange and vast the universe is",
        "I started writing a short poem about the rain on the window",
        "the new exhibit completely changed how I think about color",
        "I have been reading ancient philosophy about the nature of the soul",
        "I wonder whether dreams are just the mind telling itself stories",
        "I found an old jazz record and listened to it three times in a row",
        "I want to learn a language that has no word for time",
        "I tried cooking an Ethiopian dish I had never heard of before",
        "the sunset looked like an impressionist painting",
        "I sketched strangers in the park and invented whole lives for them",
        "a documentary about deep ocean creatures completely blew my mind",
        "I signed up for a pottery class just to see what happens",
        "a single poem can hold an entire universe",
        "I am fascinated by how different cultures imagine the afterlife",
        "I have been experimenting with songs in unusual time signatures",
        "I wandered into an indie bookstore and left with three books of poetry",
        "perhaps beauty is just curiosity paying attention",
        "I spent the evening debating consciousness and free will",
        "the folk music at the festival felt almost ancient",
    ),
    tags=(
        "art is everything",
        "#curious",
        "what a strange beautiful world",
        "so many questions",
        "pure poetry",
        "the universe is wild",
        "#inspired",
        "endlessly fascinating",
    ),
)
# Low: everyday, familiar and routine things (home, "my mom", TV, football), shorthand
# like "wanna" and "dont" (Schwartz et al. 2013); more first person and present tense
# (Pennebaker & King 1999).
_OPENNESS_LOW = PoleMarkers(
    clauses=(
        "I'm just gonna stick with what I know",
        "same old routine and honestly that's how I like it",
        "I don't get modern art, it's just paint on a wall",
        "my mom made her usual meatloaf and it was perfect",
        "I watched the same show again because why change what works",
        "I don't need fancy food, a burger is fine",
        "I stayed home and watched the football game like every Sunday",
        "I ordered the usual at the diner",
        "new stuff is overrated, give me the normal way",
        "I wanna just chill at home this weekend",
        "I don't see the point of those deep artsy movies",
        "I like things simple and practical",
        "I always go to the same place for lunch and I'm fine with that",
        "poetry is boring, I don't get it",
        "I'm not into trying weird stuff",
        "I just want my regular coffee, nothing fancy",
        "we're going to the same vacation spot as every year",
        "I don't need to travel, home is good",
    ),
    tags=(
        "nothing fancy",
        "keep it simple",
        "same as always",
        "just the usual",
        "regular is fine",
        "home sweet home",
        "normal is good",
    ),
)

# --- Conscientiousness ------------------------------------------------------------------
# High: completed, ready, work, tomorrow, vacation planned, success (Yarkoni 2010;
# Schwartz et al. 2013); fewer negations and negative emotion (Pennebaker & King 1999).
_CONSCIENTIOUSNESS_HIGH = PoleMarkers(
    clauses=(
        "I finished my whole to-do list before noon",
        "I already planned meals for the entire week",
        "I got up at six to get a head start on the report",
        "I completed the project two days ahead of schedule",
        "I organized my desk and color-coded my calendar",
        "I'm ready for tomorrow's meeting, notes and all",
        "I paid all the bills early so they are off my mind",
        "I stuck to my study schedule all week",
        "I double-checked everything before sending it off",
        "I laid out my bag and clothes for the morning",
        "I set three goals for this month and I'm on track",
        "I cleaned the whole apartment and labeled the pantry",
        "I made a packing checklist a week before the trip",
        "I went to the gym at 6am exactly as planned",
        "a productive day at work feels so good",
        "I submitted the application right on time",
        "I reviewed my budget and saved a little extra this month",
        "I keep a planner so nothing slips through the cracks",
    ),
    tags=(
        "#productive",
        "on schedule",
        "checked off",
        "ready for tomorrow",
        "goals",
        "done and done",
        "organized and ready",
        "plan the work, work the plan",
    ),
)
# Low: bored, lazy, forgot, "lol", "wtf", procrastination (Schwartz et al. 2013);
# stupid, boring (negatively related to conscientiousness in Yarkoni 2010).
_CONSCIENTIOUSNESS_LOW = PoleMarkers(
    clauses=(
        "I was supposed to study but I took a three hour nap",
        "I forgot my keys again and had to wait outside",
        "I totally spaced on the deadline lol",
        "the laundry has been sitting on the chair for a week",
        "I skipped class because I was bored",
        "I'll do the dishes tomorrow or maybe next week",
        "I started three projects and finished none of them",
        "I overslept and missed the bus again",
        "I lost my phone charger for the third time this month",
        "I was gonna go to the gym but nah",
        "I'm procrastinating on literally everything",
        "I have no idea where my wallet is",
        "I just winged the presentation",
        "I bought snacks instead of actual groceries lol",
        "I left the assignment for the last minute like always",
        "I keep saying I'll start tomorrow",
        "I was so bored I watched videos all day",
        "I forgot to reply to an email from two weeks ago",
    ),
    tags=("lol", "meh", "oops", "wtf", "so bored", "later maybe", "nap time", "eh"),
)

# --- Extraversion -----------------------------------------------------------------------
# High: party, bar, drinks, dancing, crowd, girls/boys, friends, "can't wait", "love you",
# tonight (Yarkoni 2010; Schwartz et al. 2013); positive emotion and social words
# (Pennebaker & King 1999).
_EXTRAVERSION_HIGH = PoleMarkers(
    clauses=(
        "can't wait to see everyone at the party tonight",
        "we're hitting the bar after work, who's in?",
        "I met so many cool people at the concert",
        "I danced until 2am with the whole crew",
        "I love a packed room and loud music",
        "dinner with the girls was the highlight of my week",
        "I invited the whole floor to my birthday drinks",
        "I talked to literally everyone at the barbecue",
        "we're going out again tomorrow, text me",
        "the crowd at the game was insane and I loved it",
        "I'm hosting a game night this weekend and everyone is invited",
        "I started chatting with strangers on the train and made a new friend",
        "love you guys, last night was amazing",
        "I can't stay home on a Friday night",
        "we sang karaoke all night",
        "I signed up to lead the team social",
        "brunch with the boys and then a house party",
        "I'm so excited for the festival with all my friends",
    ),
    tags=(
        "love you guys",
        "who's coming?",
        "party time",
        "so excited",
        "ya",
        "hit me up",
        "best night ever",
        "can't wait",
    ),
)
# Low: computer, internet, anime, manga, reading, books, "^_^", staying in
# (Schwartz et al. 2013, introversion); fewer social words (Pennebaker & King 1999).
_EXTRAVERSION_LOW = PoleMarkers(
    clauses=(
        "I spent the evening alone with a book and it was perfect",
        "I skipped the party and stayed in with my computer",
        "I'm catching up on my anime",
        "I need a quiet day to recharge after all that socializing",
        "I left the gathering early, too many people",
        "I prefer texting over phone calls any day",
        "I spent the weekend reading manga in my room",
        "a quiet night with tea and the internet is all I need",
        "I don't really like crowds",
        "I'd rather stay home than go out",
        "I played video games by myself all afternoon",
        "I finished a whole book series in one quiet weekend",
        "I ate lunch alone at my desk and liked it",
        "small talk drains me",
        "I canceled plans so I could stay in",
        "I like my own company more than big groups",
        "I spent hours on a forum talking about programming",
    ),
    tags=(
        "^_^",
        "quiet night",
        "introvert life",
        "staying in",
        "need some alone time",
        "books > people",
        "home alone and happy",
    ),
)

# --- Agreeableness ----------------------------------------------------------------------
# High: wonderful, together, visiting, family, blessed, thank you, prayers (Yarkoni 2010;
# Schwartz et al. 2013); positive emotion, few swear words (Pennebaker & King 1999).
_AGREEABLENESS_HIGH = PoleMarkers(
    clauses=(
        "thank you all for the kind birthday wishes",
        "I'm so grateful for my wonderful family",
        "I brought soup over to my neighbor who has been sick",
        "I hope everyone has a wonderful weekend",
        "sending prayers to everyone affected by the storm",
        "my coworker helped me out and I really appreciate it",
        "I love spending time together with the people I care about",
        "I volunteered at the shelter this morning",
        "happy to give a ride to anyone who needs one tomorrow",
        "I'm so proud of my little sister",
        "I'm blessed to have such caring friends",
        "everyone deserves a little kindness",
        "I made up with my brother and we're good now",
        "I baked cookies for the whole office",
        "visiting grandma always warms my heart",
        "I told the waiter he was doing a great job",
        "let me know if I can help with anything",
    ),
    tags=(
        "thank you",
        "#blessed",
        "love you all",
        "so grateful",
        "hugs",
        "be kind",
        "take care everyone",
    ),
)
# Low: swearing, stupid, hate, idiots, not caring (Yarkoni 2010 and Schwartz et al. 2013
# found profanity and hostile words most correlated with low agreeableness).
_AGREEABLENESS_LOW = PoleMarkers(
    clauses=(
        "people are so damn stupid sometimes",
        "I don't care what anyone thinks about it",
        "my coworker is useless and everyone knows it",
        "I hate when people talk to me before coffee",
        "the idiot in front of me couldn't even park",
        "don't tell me how to live my life",
        "honestly most people are just annoying",
        "I told the manager exactly what I thought of that crap",
        "not my problem if they can't keep up",
        "I'm sick of fake people",
        "whoever keeps stealing my lunch, I will find you",
        "I unfollowed half my feed because they're idiots",
        "people who chew loudly should stay home",
        "I don't owe anyone an apology",
        "what a waste of my damn time",
        "I argued with my neighbor about the fence and I was right",
        "they can deal with their own mess",
    ),
    tags=("whatever", "damn", "smh", "deal with it", "idiots", "not sorry", "screw it"),
)

# --- Neuroticism ------------------------------------------------------------------------
# High: awful, terrible, depressing, stressful (Yarkoni 2010); depressed, sick of, hate,
# lonely, tired, "fml" (Schwartz et al. 2013); negative emotion and first person singular
# (Pennebaker & King 1999).
_NEUROTICISM_HIGH = PoleMarkers(
    clauses=(
        "I couldn't sleep again because my mind kept racing",
        "I'm so stressed about tomorrow I feel sick",
        "why does everything always go wrong for me",
        "I feel so lonely even when people are around",
        "I keep worrying that everyone is mad at me",
        "I just want to cry",
        "I'm so tired of feeling like this",
        "I had another panic attack before the meeting",
        "I'm sick of everything right now",
        "I can't stop overthinking that text",
        "everything feels so depressing lately",
        "I'm scared I'm going to mess it all up",
        "I snapped at my mom and now I feel terrible",
        "my anxiety is through the roof this week",
        "I feel like nobody actually cares",
        "one bad comment ruined my whole day",
        "I'm freaking out about the test results",
    ),
    tags=("ugh", "fml", "so stressed", "why me", "send help", "crying", "anxious", "awful"),
)
# Low (emotional stability): sports, game, team, beach, workout, great day, success
# (Schwartz et al. 2013); calm, relaxed wording with little negative emotion.
_NEUROTICISM_LOW = PoleMarkers(
    clauses=(
        "I'm feeling calm and ready for anything",
        "great workout this morning, feeling strong",
        "the team played well and we won the game",
        "nothing can ruin a beautiful beach day",
        "I had a relaxing afternoon and I'm in a good place",
        "things didn't go to plan but it's all good",
        "I slept like a baby",
        "the traffic was bad so I put on a podcast and chilled",
        "I'm not worried about the exam, I'll be fine",
        "another good day at the lake",
        "life's pretty good right now",
        "I took the setback in stride and moved on",
        "a long run cleared my head",
        "I'm easygoing about the schedule change",
        "I had a great day with no stress at all",
        "it rained on our picnic and we laughed it off",
        "I stay pretty relaxed under pressure",
    ),
    tags=(
        "all good",
        "no worries",
        "feeling great",
        "good vibes",
        "life is good",
        "stress free",
        "easy does it",
    ),
)

TRAIT_MARKERS: dict[tuple[str, str], PoleMarkers] = {
    ("openness", "high"): _OPENNESS_HIGH,
    ("openness", "low"): _OPENNESS_LOW,
    ("conscientiousness", "high"): _CONSCIENTIOUSNESS_HIGH,
    ("conscientiousness", "low"): _CONSCIENTIOUSNESS_LOW,
    ("extraversion", "high"): _EXTRAVERSION_HIGH,
    ("extraversion", "low"): _EXTRAVERSION_LOW,
    ("agreeableness", "high"): _AGREEABLENESS_HIGH,
    ("agreeableness", "low"): _AGREEABLENESS_LOW,
    ("neuroticism", "high"): _NEUROTICISM_HIGH,
    ("neuroticism", "low"): _NEUROTICISM_LOW,
}

# Neutral openers: the first words of most posts, so "first 5 words -> rest" leaves the
# trait to the continuation.
POST_OPENERS: tuple[str, ...] = (
    "So today",
    "Okay so",
    "Quick update:",
    "Not gonna lie,",
    "Random thought:",
    "Well,",
    "Update:",
    "This morning",
    "Last night",
    "Yesterday",
    "Anyway,",
    "Fun fact:",
    "Small thing, but",
    "Can I just say",
    "Story time:",
    "Heads up,",
    "Funny thing:",
    "In other news,",
    "Monday recap:",
    "Weekend recap:",
    "So apparently",
    "Alright,",
    "True story:",
    "Little life update:",
    "Meanwhile,",
    "For the record,",
    "Checking in:",
    "Guess what,",
    "Today's news:",
    "Just so you know,",
    "Real quick:",
    "Not sure why I'm posting this but",
    "Daily report:",
    "Well then,",
    "Evening update:",
    "Honest update:",
)

# Everyday events by topic: neutral content that gives posts something to be about.
POST_TOPICS: dict[str, tuple[str, ...]] = {
    "commute": (
        "the bus was twenty minutes late",
        "the train was packed",
        "I took the long way home",
        "traffic on the bridge was backed up for miles",
        "I biked to work for the first time this month",
        "they closed the station for repairs",
    ),
    "weather": (
        "it finally snowed",
        "it rained all afternoon",
        "the heat wave is still going",
        "the wind knocked over our trash cans",
        "it was foggy when I woke up",
        "the first frost hit the garden",
    ),
    "food": (
        "I made pasta for dinner",
        "we tried the new taco place downtown",
        "I burned the toast",
        "the bakery ran out of croissants",
        "I had leftover pizza for lunch",
        "I attempted homemade bread",
    ),
    "work": (
        "the meeting ran over by an hour",
        "we got a new printer at the office",
        "my shift started early",
        "the office wifi was down all morning",
        "I had a call with a client in another time zone",
        "they moved our desks to the third floor",
    ),
    "school": (
        "the midterm was today",
        "our professor cancelled class",
        "I picked up my textbooks from the library",
        "the group project is due Friday",
        "registration for next semester opened",
        "the lecture hall heating was broken",
    ),
    "home": (
        "the landlord finally fixed the sink",
        "I moved the couch to the other wall",
        "the neighbors are renovating their kitchen",
        "our power went out for an hour",
        "I finally hung the curtains",
        "the washing machine started making a weird noise",
    ),
    "pets": (
        "the dog learned to open the back door",
        "my cat knocked a mug off the table",
        "we took the puppy to the vet",
        "the neighbor's cat visited our porch again",
        "the goldfish got a bigger tank",
    ),
    "shopping": (
        "I went to the grocery store after work",
        "the mall was packed",
        "I returned the shoes that didn't fit",
        "I found a jacket on sale",
        "the hardware store had a line out the door",
    ),
    "family": (
        "my cousin visited for the weekend",
        "my parents called",
        "we had a family dinner on Sunday",
        "my brother borrowed my car",
        "my aunt sent a package in the mail",
    ),
    "media": (
        "the season finale aired",
        "the new album dropped at midnight",
        "I rewatched an old movie",
        "I found a new podcast",
        "the streaming service raised its prices",
    ),
    "fitness": (
        "the local team lost in overtime",
        "I went for a walk around the block",
        "the gym changed its hours",
        "the pool was closed for cleaning",
    ),
    "travel": (
        "my flight got delayed by two hours",
        "we drove to the coast",
        "I booked a trip for next month",
        "the hotel gave us the wrong room",
    ),
    "tech": (
        "my phone updated itself",
        "the laptop battery died during a call",
        "I switched to a new phone plan",
        "the printer jammed three times",
    ),
    "errands": (
        "I had a dentist appointment",
        "the line at the post office was long",
        "I renewed my driver's license",
        "the coffee machine broke at work",
        "I saw a double rainbow on the way home",
    ),
}
_ALL_EVENTS: tuple[str, ...] = tuple(e for events in POST_TOPICS.values() for e in events)

# Neutral padding for posts that came out too short.
NEUTRAL_FILLERS: tuple[str, ...] = (
    "more on that later",
    "that's the update for now",
    "that's pretty much my day so far",
    "not much else going on",
    "we'll see how the rest of the week goes",
    "that's all for today",
    "anyway, that happened",
    "just thought I'd share",
)

_CONNECTORS: tuple[str, ...] = (", and ", " - ", ", and honestly ", " and ", ", also ")


def marker_clause_probability(strength: float) -> float:
    """Chance that a trait contributes a marker clause, given its |z|: grows with |z|."""
    return float(np.clip(0.10 + 0.45 * strength, 0.0, 0.92))


def marker_tag_probability(strength: float) -> float:
    """Chance that a trait contributes a short marker tag, given its |z|: grows with |z|."""
    return float(np.clip(0.06 + 0.32 * strength, 0.0, 0.85))


def sample_trait_scores(n: int, seed: int) -> np.ndarray:
    """n x 5 z-scores (TRAITS order) from a multivariate normal with the human correlations."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chol = np.linalg.cholesky(HUMAN_TRAIT_CORRELATIONS)
    standard = np.random.default_rng(seed).standard_normal((n, len(TRAITS)))
    return standard @ chol.T


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ends_sentence(text: str) -> bool:
    return text.rstrip()[-1:] in {"?", "!", "."}


def _casual(text: str) -> str:
    """Low-conscientiousness texting style: all lowercase, no apostrophes, no final stop."""
    return text.lower().replace("'", "").rstrip(".")


def _assemble(
    opener: str | None,
    units: list[str],
    tags: list[str],
    exclaim: bool,
    trail_off: bool,
    rng: random.Random,
) -> str:
    """Join units into at most MAX_SENTENCES sentences, then append tags."""
    sentences: list[str] = []
    remaining = list(units)
    while remaining:
        current = remaining.pop(0)
        # Merge when too many units are left for the sentence budget, or now and then for variety.
        slots_left = MAX_SENTENCES - len(sentences) - 1
        while (
            remaining
            and not _ends_sentence(current)
            and (len(remaining) > slots_left or rng.random() < 0.3)
        ):
            current = current + rng.choice(_CONNECTORS) + remaining.pop(0)
        sentences.append(current)
    if opener:
        sentences[0] = f"{opener} {sentences[0]}"
    finished = []
    for i, sentence in enumerate(sentences):
        sentence = _capitalize(sentence)
        if not _ends_sentence(sentence):
            if exclaim and rng.random() < 0.7:
                sentence += "!" if rng.random() < 0.6 else "!!"
            elif trail_off and i == len(sentences) - 1:
                sentence += "..."
            else:
                sentence += "."
        finished.append(sentence)
    text = " ".join(finished)
    if tags:
        text = text + " " + " ".join(tags)
    return text


def _write_post(scores: np.ndarray, rng: random.Random) -> str:
    """One post whose markers follow the author's five z-scores."""
    clause_picks: list[tuple[float, str]] = []
    tag_picks: list[tuple[float, str]] = []
    for trait, z in zip(TRAITS, scores, strict=True):
        strength = abs(float(z))
        bank = TRAIT_MARKERS[trait, "high" if z >= 0 else "low"]
        if rng.random() < marker_clause_probability(strength):
            clause_picks.append((strength, rng.choice(bank.clauses)))
            # Very strong authors sometimes say it twice.
            if strength > 1.5 and rng.random() < 0.3:
                clause_picks.append((strength - 0.01, rng.choice(bank.clauses)))
        if rng.random() < marker_tag_probability(strength):
            tag_picks.append((strength, rng.choice(bank.tags)))
    # The strongest traits win when a post has room for only a few markers.
    clause_picks.sort(key=lambda pick: -pick[0])
    tag_picks.sort(key=lambda pick: -pick[0])
    clauses = list(dict.fromkeys(text for _, text in clause_picks[:MAX_MARKER_CLAUSES]))
    tags = list(dict.fromkeys(text for _, text in tag_picks[:MAX_MARKER_TAGS]))
    rng.shuffle(clauses)
    rng.shuffle(tags)

    topic = rng.choice(sorted(POST_TOPICS))
    event = rng.choice(POST_TOPICS[topic])
    opener = rng.choice(POST_OPENERS) if rng.random() < 0.8 else None
    # Mostly event first (neutral start), sometimes a marker clause leads.
    event_first = not clauses or rng.random() < 0.85
    z = dict(zip(TRAITS, (float(v) for v in scores), strict=True))
    exclaim = rng.random() < float(np.clip(0.5 * z["extraversion"] - 0.1, 0.0, 0.85))
    trail_off = rng.random() < float(np.clip(0.5 * z["neuroticism"] - 0.15, 0.0, 0.7))
    casual = rng.random() < float(np.clip(-0.55 * z["conscientiousness"] - 0.15, 0.0, 0.8))

    def compose(extra: list[str]) -> str:
        units = [event, *clauses] if event_first else [*clauses[:1], event, *clauses[1:]]
        return _assemble(opener, [*units, *extra], tags, exclaim, trail_off, rng)

    text = compose([])
    # Too long: drop the least essential parts first (tags, then the weakest clauses).
    while len(text.split()) > MAX_POST_WORDS:
        if tags:
            tags.pop()
        elif clauses:
            clauses.pop()
        else:
            opener = None
        text = compose([])
    # Too short: pad with neutral content (a filler or another everyday event) that fits.
    extra: list[str] = []
    while len(text.split()) < MIN_POST_WORDS:
        candidate = rng.choice(NEUTRAL_FILLERS if not extra else _ALL_EVENTS)
        padded = compose([*extra, candidate])
        if len(padded.split()) <= MAX_POST_WORDS:
            extra.append(candidate)
            text = padded
    return _casual(text) if casual else text


def generate_posts(n_posts: int, seed: int) -> pd.DataFrame:
    """Synthetic PsychGenerator-like posts in the canonical posts schema.

    Columns: post_id (str), text (str), openness, conscientiousness, extraversion,
    agreeableness, neuroticism (float z-scores of the post's single author). The same
    (n_posts, seed) always gives the same frame.
    """
    if n_posts < 1:
        raise ValueError(f"n_posts must be >= 1, got {n_posts}")
    scores = sample_trait_scores(n_posts, seed)
    # Scores come from numpy's generator; the wording from a separate stream, both from `seed`.
    text_rng = random.Random(f"big5-synthetic-posts-{seed}")
    texts = [_write_post(row, text_rng) for row in scores]
    frame = pd.DataFrame({"post_id": [f"synthetic-{i:06d}" for i in range(n_posts)], "text": texts})
    for j, trait in enumerate(TRAITS):
        frame[trait] = scores[:, j].astype(float)
    return frame


# --- Scenarios --------------------------------------------------------------------------

# First names from many languages and regions, so scenarios are not all about one culture.
FIRST_NAMES: tuple[str, ...] = (
    "Aaliyah", "Abdul", "Ada", "Adebayo", "Aditi", "Adrian", "Aiko", "Aisha", "Akira",
    "Alejandro", "Alice", "Amara", "Amir", "Ana", "Anders", "Andrei", "Anika", "Anton",
    "Arjun", "Astrid", "Ayesha", "Beatriz", "Ben", "Bianca", "Bilal", "Bongani", "Bruno",
    "Camila", "Carlos", "Carmen", "Chen", "Chidi", "Chloe", "Chris", "Clara", "Dalia",
    "Daniel", "Daria", "David", "Deepa", "Diego", "Dmitri", "Elena", "Elif", "Elijah",
    "Emeka", "Emily", "Emma", "Esther", "Ethan", "Fatima", "Felix", "Fernando", "Fiona",
    "Freya", "Gabriel", "Grace", "Hamza", "Hana", "Hannah", "Haruto", "Hassan", "Helga",
    "Hiroshi", "Ibrahim", "Ifeoma", "Igor", "Imani", "Ines", "Ingrid", "Isaac", "Isabel",
    "Ivan", "Jabari", "Jack", "Jamal", "Javier", "Jin", "Joao", "Jonas", "Jorge", "Joseph",
    "Julia", "Kai", "Kamala", "Karim", "Kateryna", "Kavya", "Kenji", "Khalid", "Kofi",
    "Lars", "Laura", "Layla", "Leila", "Leon", "Liam", "Lina", "Lucas", "Lucia", "Luis",
    "Maja", "Malik", "Manon", "Marco", "Maria", "Mariam", "Mateo", "Maya", "Mehmet",
    "Mei", "Mia", "Miguel", "Mina", "Mohammed", "Nadia", "Naomi", "Nikhil", "Nina",
    "Noah", "Nomvula", "Oksana", "Olga", "Oliver", "Omar", "Oscar", "Pablo", "Paolo",
    "Priya", "Rafael", "Rahul", "Rania", "Ravi", "Rebecca", "Reza", "Rin", "Rosa",
    "Ruth", "Sakura", "Salma", "Samuel", "Sana", "Santiago", "Sara", "Sebastian", "Seo-yeon",
    "Shreya", "Sienna", "Simon", "Siddharth", "Sofia", "Soren", "Sunita", "Tariq", "Tatiana",
    "Thabo", "Theo", "Tomas", "Tunde", "Valentina", "Victor", "Wei", "Yara", "Yasmin",
    "Yousef", "Yuki", "Yusuf", "Zainab", "Zara", "Zeynep", "Zoe", "Zsofia", "Mateus",
    "Aroha", "Keanu", "Leilani", "Tane", "Nia", "Kwame", "Ayodele", "Femi", "Lerato",
    "Sipho", "Ananya", "Vikram", "Meera", "Farah", "Nour", "Youssef", "Ji-ho", "Min-jun",
    "Hye-jin", "Thanh", "Linh", "Minh", "Bao", "Siosaia", "Mele", "Ahanu", "Nayeli",
    "Ximena", "Renata", "Joaquin", "Agnieszka", "Piotr", "Milan", "Petra", "Jana", "Eero",
    "Aino", "Sigrid", "Magnus", "Declan", "Siobhan", "Niamh", "Rhys", "Gareth", "Mairi",
)  # fmt: skip

# Slot values shared by the templates below.
_SCENARIO_POOLS: dict[str, tuple[str, ...]] = {
    "workplace": (
        "insurance office", "design studio", "hospital", "bank branch", "software startup",
        "call center", "law firm", "newspaper", "warehouse", "hotel", "bakery", "library",
    ),
    "project": (
        "quarterly report", "client presentation", "inventory count", "budget review",
        "grant application", "product launch plan", "safety audit",
    ),
    "evening_plan": (
        "a concert", "a play", "a basketball game", "a friend's birthday dinner",
        "a cooking class", "a first date", "a comedy show",
    ),
    "city": (
        "Lisbon", "Nairobi", "Seoul", "Toronto", "Melbourne", "Mexico City", "Berlin",
        "Mumbai", "Cape Town", "Osaka", "Buenos Aires", "Istanbul", "Chicago", "Hanoi",
        "Edinburgh", "Lagos", "Warsaw", "Montreal",
    ),
    "holiday": (
        "Thanksgiving", "New Year's", "Eid", "Diwali", "Lunar New Year", "Christmas",
        "Passover", "midsummer",
    ),
    "relative": (
        "older sister", "uncle", "mother-in-law", "cousin", "grandmother", "stepfather",
        "younger brother", "aunt",
    ),
    "item": ("car", "camera", "bike", "laptop", "tent", "guitar", "drone", "sewing machine"),
    "damage": ("small dent", "broken strap", "long scratch", "missing part", "cracked cover"),
    "parent": ("father", "mother", "stepmother", "grandfather"),
    "program": (
        "law program", "nursing course", "engineering degree", "accounting course",
        "medical school application", "teaching certificate",
    ),
    "business": (
        "food truck", "bakery", "bike repair shop", "podcast", "landscaping business",
        "tattoo studio", "online vintage shop",
    ),
    "pet": ("dog", "cat", "parrot", "rabbit", "tortoise", "puppy"),
    "school_stage": ("primary school", "high school", "their first year of college", "summer camp"),
    "gift": (
        "bunch of flowers", "chocolate cake", "handwritten card", "pair of concert tickets",
        "potted plant", "box of pastries",
    ),
    "trip_place": ("the mountains", "the coast", "a lake cabin", "a music festival", "a wine region"),
    "booking": ("cabin", "train tickets", "campsite", "hotel room", "ferry tickets"),
    "amount": ("$200", "$500", "$80", "300 euros", "150 pounds", "$1,000"),
    "need": ("a car repair", "a dentist bill", "a plane ticket", "this month's rent", "a new laptop"),
    "noise": (
        "loud music", "barking dog", "drum practice", "late-night parties",
        "early-morning workouts", "home renovation",
    ),
    "food_gift": (
        "plate of cookies", "loaf of banana bread", "bowl of dumplings", "jar of homemade jam",
        "tray of samosas", "pot of soup",
    ),
    "subject": ("chemistry", "history", "economics", "biology", "art history", "statistics", "geography"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "school": ("the local high school", "a language school", "a community college", "a dance academy"),
    "mentor": ("debate coach", "older cousin", "roommate", "favourite teacher", "neighbour"),
    "venue": ("post office", "coffee shop", "airport security", "bakery", "pharmacy", "ticket office"),
    "transport": ("train", "subway", "bus", "tram", "ferry"),
    "landmark": ("train station", "old cathedral", "harbour", "city museum", "night market"),
    "clothing": ("white shirt", "new jacket", "silk scarf", "light blue dress", "suit trousers"),
    "party_event": ("office party", "wedding", "camping trip", "karaoke night", "graduation dinner"),
    "device": ("laptop", "tablet", "family computer", "phone"),
    "study_program": (
        "master's program", "cooking school", "residency program", "art academy",
        "exchange program", "pilot training course",
    ),
    "milestone": ("30th", "40th", "50th", "18th", "65th", "21st"),
    "party_place": ("living room", "restaurant", "backyard", "community hall", "rooftop bar"),
    "years": ("two", "three", "five", "ten"),
    "vehicle": ("van", "pickup truck", "big car", "trailer"),
    "field": ("nursing", "teaching", "marketing", "engineering", "research", "sales"),
    "exam": ("driving test", "statistics final", "citizenship test", "piano exam", "bar exam"),
    "argument_topic": ("money", "politics", "the wedding plans", "household chores", "the family business"),
    "performance": ("piano recital", "first stand-up set", "football final", "school play", "art opening"),
    "breakable": ("mug", "vase", "lamp", "record", "picture frame", "teapot"),
    "dream_job": ("photographer", "chef", "yoga instructor", "novelist", "game designer", "carpenter"),
    "race": ("half marathon", "triathlon", "10k charity run", "cycling race", "swim across the bay"),
    "months": ("three", "four", "six"),
    "region": ("Vietnam", "Peru", "Morocco", "the Balkans", "Scandinavia", "Mexico", "Sri Lanka"),
    "hours": ("six", "nine", "eleven", "fourteen"),
    "country": ("Brazil", "Japan", "Kenya", "Italy", "Poland", "South Korea", "India", "Chile"),
    "relation": ("roommate", "partner", "brother", "sister", "best friend"),
    "sport_miss": (
        "missed an easy penalty kick", "missed two free throws", "dropped a catch at the end",
        "served into the net on match point", "fell on the last lap",
    ),
    "instrument": ("guitar", "violin", "piano", "drums", "cello", "ukulele", "saxophone"),
    "club": ("chess club", "pottery class", "climbing gym", "book club", "salsa class", "birdwatching group"),
    "date_place": ("wine bar", "bowling alley", "ramen shop", "art gallery", "park cafe"),
    "shop": ("bookshop", "bike shop", "plant shop", "record store", "hardware store"),
    "chore": ("dishes", "laundry", "recycling", "bathroom cleaning"),
}  # fmt: skip

# (situation, template). {x} is PersonX (opens the dialogue), {y} is PersonY (replies).
SCENARIO_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("work", "{x} and {y} have shared a desk at the {workplace} for two years. This morning {x} found out that {y} presented {x}'s idea at the team meeting as their own. {x} decides to bring it up over lunch."),
    ("work", "{y} is {x}'s new manager at the {workplace}. On Friday afternoon {y} asks {x} to stay late to finish the {project}, even though {x} has tickets for {evening_plan} that night."),
    ("work", "{x} has been offered a job in {city} and has to answer by Monday. {x} meets {y}, a former colleague, at a cafe to ask whether taking it is a good idea."),
    ("work", "{x} accidentally deleted a shared file for the {project} that {y} had worked on all week. {x} walks over to {y}'s desk to explain what happened."),
    ("work", "{x} and {y} both applied for the same promotion at the {workplace}. The announcement came out this morning, and {y} got the position."),
    ("family", "{x} is hosting the family {holiday} dinner for the first time this year. {y}, {x}'s {relative}, arrives an hour early and starts rearranging the kitchen."),
    ("favour", "{x} borrowed {y}'s {item} last month and returned it with a {damage}. {y} noticed it this morning and calls {x} about it."),
    ("family", "{x} wants to tell {y}, {x}'s {parent}, about leaving the {program} to start a {business}. They sit down together after dinner."),
    ("favour", "{y} looked after {x}'s {pet} while {x} was in {city} for a week. When {x} comes to pick it up, {y} mentions that the {pet} escaped for a few hours on Tuesday."),
    ("friends", "{x} and {y} have been best friends since {school_stage}. {y} just got engaged, but {x} heard the news from someone else first."),
    ("apology", "{x} forgot {y}'s birthday for the second year in a row. The next day {x} shows up at {y}'s door with a {gift}."),
    ("friends", "{x} and {y} planned a weekend trip to {trip_place}, but {y} cancelled the night before. {x} had already paid for the {booking}."),
    ("money", "{x} lent {y} {amount} three months ago to cover rent. {y} has not mentioned it since, and {x} now needs the money for {need}."),
    ("friends", "{x} saw a post online that {y} wrote about their group of friends. {x} thinks it was about them and calls {y} to ask."),
    ("neighbours", "{y} moved in next door to {x} two weeks ago. Every night the {noise} from {y}'s flat keeps {x} awake, and {x} finally knocks on {y}'s door."),
    ("neighbours", "A tree from {x}'s garden fell onto {y}'s fence during last night's storm. In the morning {x} goes next door to talk about the damage."),
    ("neighbours", "{x} has lived on the same street for thirty years, and {y} just moved in across the road. {x} walks over with a {food_gift} to welcome {y} to the neighbourhood."),
    ("school", "{x} and {y} were paired up for a {subject} project that is due on {weekday}. {y} has not answered any of {x}'s messages for a week."),
    ("school", "{x} teaches at {school}, and {y} is a student who has missed class for two weeks. {x} asks {y} to stay behind after the lesson."),
    ("school", "{x} got a lower grade than {y} on the {subject} exam, even though {x} helped {y} study for it. They run into each other in the library the next day."),
    ("advice", "{x} is nervous about giving a speech at graduation. {y}, {x}'s {mentor}, offers to listen to a practice run in the empty auditorium."),
    ("strangers", "{x} has been waiting in a long line at the {venue} when {y} cuts in right in front. {x} taps {y} on the shoulder."),
    ("strangers", "On a crowded {transport}, {y} drops a wallet without noticing. {x} picks it up and follows {y} off the {transport}."),
    ("strangers", "{x} is lost in {city} and the phone battery just died. {x} stops {y}, who is walking a {pet}, to ask the way to the {landmark}."),
    ("strangers", "{x} accidentally spilled coffee on {y}'s {clothing} in a busy cafe. {y} is on the way to a job interview."),
    ("conflict", "{x} and {y} are roommates, and the {chore} has been piling up for a week. {x} comes home to find {y} watching TV in the middle of the mess."),
    ("conflict", "{y} posted an embarrassing photo of {x} from the {party_event} without asking. {x} wants it taken down and messages {y}."),
    ("conflict", "{x} found out that {y} has been reading {x}'s messages on the shared {device}. {x} brings it up with {y} in the living room."),
    ("conflict", "{x} and {y} disagree about where to spend the holidays this year. {x} wants to visit family in {city}, while {y} wants to stay home."),
    ("celebration", "{x} just got accepted into a {study_program} in {city}. {x} calls {y}, a close friend, to share the news."),
    ("celebration", "{y} is throwing a surprise party for {x}'s {milestone} birthday. {x} walks into the dark {party_place} and the lights come on."),
    ("celebration", "{x} and {y} are seated at the same table at a mutual friend's wedding. They have not spoken since an argument {years} years ago."),
    ("celebration", "{x} finally paid off the last of a student loan. {x} invites {y} out to dinner to celebrate and insists on paying."),
    ("favour", "{x} is moving to a new apartment on Saturday and needs help with the furniture. {x} calls {y}, who owns a {vehicle}, to ask for a hand."),
    ("favour", "{x} asks {y} for a recommendation letter for a job in {field}. {y} has only worked with {x} for two months."),
    ("favour", "{x} is going to {city} for a week and asks {y} to water the plants and feed the {pet}."),
    ("favour", "{x} has a {exam} tomorrow and asks {y}, who passed it last year, for some last-minute help."),
    ("apology", "{x} said something hurtful to {y} during an argument about {argument_topic}. A day later {x} comes over to apologise."),
    ("apology", "{x} missed {y}'s {performance} after promising to be there. {x} waits outside afterwards to say sorry."),
    ("apology", "{x} broke {y}'s favourite {breakable} while helping to clean the flat. {x} has to tell {y} before {y} notices."),
    ("advice", "{x} is thinking about quitting a stable job to become a {dream_job}. {x} asks {y}, who made a similar move, for advice over coffee."),
    ("advice", "{x} suspects that their partner is unhappy in the relationship. {x} asks {y}, who has known them both for years, what to do."),
    ("advice", "{x} wants to be ready for a {race} in {months} months. {y}, a trainer at the local gym, sits down with {x} to make a plan."),
    ("advice", "{x} has two job offers, one in {city} and one close to home. {x} calls {y}, an old mentor, to talk it through."),
    ("travel", "{x} and {y} are backpacking through {region} together. The overnight bus they planned to take was cancelled, and they are stuck at the station."),
    ("travel", "{x}'s luggage was lost on the flight to {city}. {y}, the airline's desk agent, is the only person left at the counter."),
    ("travel", "{x} and {y} are sitting next to each other on a {hours}-hour flight to {city}. {y} keeps reclining the seat into {x}'s knees."),
    ("travel", "{x} is hosting {y}, an exchange student from {country}, for a semester. On the first evening {y} seems quiet and homesick."),
    ("health", "{x} just came home from the hospital after a minor operation. {y} drops by with a {food_gift} and offers to stay for the afternoon."),
    ("health", "{y} has been coughing all week but refuses to see a doctor. {x}, {y}'s {relation}, tries to convince {y} to make an appointment."),
    ("money", "{x} and {y} split the bill at a restaurant, but {y} ordered the most expensive dishes. {x} suggests paying separately next time."),
    ("money", "{x} is selling an old {item} and {y} thinks the price is too high. They meet in a parking lot so {y} can look at it."),
    ("sports", "{x} and {y} play on the same amateur team. In the final {x} {sport_miss}, and the team lost by one point."),
    ("hobbies", "{x} has been learning the {instrument} for six months. {x} asks {y}, who plays in a band, to listen to a first song."),
    ("hobbies", "{x} and {y} meet at a {club} for the first time. They are the only two beginners in the room."),
    ("home", "{x} is moving out of the flat that {x} and {y} have shared for three years. They are packing the last boxes together."),
    ("dating", "{x} matched with {y} on a dating app, and they are meeting for the first time at a {date_place}. {y} arrives forty minutes late."),
    ("work", "{x} works at a {shop}. {y}, a regular customer, comes in asking for a refund on something bought a month ago, without a receipt."),
    ("friends", "{x} wants to start a {business} and asks {y}, a friend since {school_stage}, to become a business partner."),
)  # fmt: skip


def _fill_template(template: str, x: str, y: str, rng: random.Random) -> str:
    slots = {
        key: rng.choice(values)
        for key, values in _SCENARIO_POOLS.items()
        if f"{{{key}}}" in template
    }
    return template.format(x=x, y=y, **slots)


def generate_scenarios(n_scenarios: int, seed: int) -> pd.DataFrame:
    """SODA-like two-person social scenarios in the canonical scenarios schema.

    Columns: scenario_id (str), narrative (2-3 sentences), person_x (opens the dialogue),
    person_y (replies; the persona-steered speaker). Narratives are unique and the two
    names always differ. The same (n_scenarios, seed) always gives the same frame.
    """
    if n_scenarios < 1:
        raise ValueError(f"n_scenarios must be >= 1, got {n_scenarios}")
    rng = random.Random(f"big5-synthetic-scenarios-{seed}")
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    attempts = 0
    # Cycle through the templates in shuffled rounds so every kind of situation shows up.
    order: list[int] = []
    while len(rows) < n_scenarios:
        attempts += 1
        if attempts > 50 * n_scenarios + 1000:
            raise ValueError(
                f"could not write {n_scenarios} distinct scenarios (got {len(rows)}): "
                "the template pool is too small for this many"
            )
        if not order:
            order = list(range(len(SCENARIO_TEMPLATES)))
            rng.shuffle(order)
        _, template = SCENARIO_TEMPLATES[order.pop()]
        person_x, person_y = rng.sample(FIRST_NAMES, 2)
        narrative = _fill_template(template, person_x, person_y, rng)
        if narrative in seen:
            continue
        seen.add(narrative)
        rows.append(
            {
                "scenario_id": f"synthetic-{len(rows):05d}",
                "narrative": narrative,
                "person_x": person_x,
                "person_y": person_y,
            }
        )
    return pd.DataFrame(rows, columns=["scenario_id", "narrative", "person_x", "person_y"])
