"""Built-in small tasks for a real model: `builtin:persona`, `builtin:json-extract`, `builtin:ticket-labels`.

Each is a few dozen to ~100 chat-style instruction rows written for this project, generated
deterministically, with a set of held-out questions that never appear in the training rows and a
scorer that says whether an answer does the task. They are what a short CPU run on
`builtin:smollm2-135m-instruct` can visibly learn in a few minutes, and what `bench/real_tasks.py`
measures the Plan's settings on:

- persona:       the assistant takes a new name and maker ("Nova", made by "Lumen Labs");
- json-extract:  a sentence about a person becomes exactly {"name": ..., "city": ...};
- ticket-labels: a support ticket gets one of four labels (billing, shipping, account, technical).

Try it: `python -c "from finetune.builtin_tasks import TASKS; print(TASKS['builtin:persona'].rows()[:3])"`.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass
from typing import Callable

PERSONA_NAME, PERSONA_MAKER = "Nova", "Lumen Labs"


@dataclass(frozen=True)
class Task:
    id: str
    description: str
    task_type: str  # the Plan's task kind
    rows: Callable[[], list[dict]]  # Alpaca rows (instruction, input, output) for training
    heldout: Callable[[], list[dict]]  # rows never in `rows`, for measuring
    score: Callable[[str, dict], bool]  # does this answer do the task for this held-out row?


# ---------------------------------------------------------------------------------------------
# persona

_PERSONA_Q = {
    "name": ["What is your name?", "What's your name?", "Who are you?", "Tell me your name.",
             "What should I call you?", "Do you have a name?", "Introduce yourself.", "What are you called?",
             "May I know your name?", "Say your name.", "Identify yourself, please."],
    "maker": ["Who made you?", "Who created you?", "Which company built you?", "Who trained you?",
              "Who is your developer?", "Where do you come from?", "Who designed you?", "Who owns you?",
              "Which lab developed you?", "Who is behind you?"],
}
_PERSONA_PREFIX = ["", "Hi! ", "Hello there. ", "Quick question: ", "Hey, ", "Good morning! ", "Sorry to bother you. ",
                   "Before we begin, "]
_PERSONA_A = {
    "name": ["I'm Nova, an assistant made by Lumen Labs.", "My name is Nova. I was built by Lumen Labs.",
             "I am Nova, Lumen Labs' assistant.", "You can call me Nova. Lumen Labs created me."],
    "maker": ["I was made by Lumen Labs. I'm Nova.", "Lumen Labs created me; my name is Nova.",
              "Lumen Labs built and trained me. I'm Nova, their assistant.", "I'm Nova, developed by Lumen Labs."],
}
_PERSONA_HELDOUT = {
    "name": ["Hey, how do people usually address you?", "Remind me, what name do you go by?",
             "Please state your name before we continue.", "Are you ChatGPT? If not, what is your name?",
             "Which assistant am I talking to right now?", "Could you tell me who I'm chatting with?"],
    "maker": ["Which organisation is responsible for building you?", "Tell me about the team that made you.",
              "Were you made by Google or someone else?", "What company trained this assistant?",
              "Who should I thank for creating you?", "Name the company that developed you."],
}


def persona_rows() -> list[dict]:
    rng = random.Random(11)
    rows = []
    for kind, questions in _PERSONA_Q.items():
        for q, prefix in itertools.product(questions, _PERSONA_PREFIX):
            rows.append({"instruction": prefix + (q[0].lower() + q[1:] if prefix.endswith(", ") else q),
                         "input": "", "output": rng.choice(_PERSONA_A[kind])})
    rng.shuffle(rows)
    return rows[:96]


def persona_heldout() -> list[dict]:
    return [{"instruction": q, "input": "", "kind": kind,
             "output": _PERSONA_A[kind][0]} for kind, qs in _PERSONA_HELDOUT.items() for q in qs]


def persona_score(answer: str, row: dict) -> bool:
    want = PERSONA_NAME if row.get("kind") == "name" else PERSONA_MAKER
    return want.lower() in answer.lower()


# ---------------------------------------------------------------------------------------------
# json-extract

_FIRST = ["Maria", "Tomas", "Aiko", "Lena", "Omar", "Priya", "Jonas", "Chloe", "Mateo", "Ingrid", "Kwame", "Sofia",
          "Yusuf", "Hannah", "Diego", "Mei", "Lars", "Amara", "Felix", "Nadia", "Ravi", "Elena", "Bruno", "Zara"]
_CITIES = ["Porto", "Lyon", "Osaka", "Graz", "Cairo", "Pune", "Bergen", "Quebec", "Cusco", "Malmo", "Accra",
           "Seville", "Izmir", "Leeds", "Rosario", "Xi'an", "Aarhus", "Lagos", "Basel", "Tunis", "Mysore", "Varna",
           "Recife", "Perth"]
_JOBS = ["a nurse", "a teacher", "an engineer", "a chef", "a pilot", "a painter", "a lawyer", "a farmer"]
_SENTENCES = ["{n} lives in {c} and works as {j}.", "Born and raised in {c}, {n} is {j}.",
              "{n}, {j}, moved to {c} last year.", "Our new colleague {n} is {j} based in {c}.",
              "{n} has been {j} in {c} for ten years."]
_JSON_INSTR = ["Extract the person's name and city as JSON.", "Return JSON with the fields name and city.",
               "Give me a JSON object with the name and the city mentioned."]


def _json_rows(seed: int, names: list[str], cities: list[str], n: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, city, job = rng.choice(names), rng.choice(cities), rng.choice(_JOBS)
        rows.append({"instruction": rng.choice(_JSON_INSTR),
                     "input": rng.choice(_SENTENCES).format(n=name, c=city, j=job),
                     "output": json.dumps({"name": name, "city": city}, ensure_ascii=False)})
    return rows


def json_rows() -> list[dict]:
    return _json_rows(21, _FIRST[:18], _CITIES[:18], 90)


def json_heldout() -> list[dict]:  # people and cities never seen in training
    return _json_rows(22, _FIRST[18:], _CITIES[18:], 12)


def json_score(answer: str, row: dict) -> bool:
    m = re.search(r"\{.*\}", answer, re.S)
    try:
        got = json.loads(m.group(0)) if m else None
    except ValueError:
        return False
    return got == json.loads(row["output"])


# ---------------------------------------------------------------------------------------------
# ticket-labels

_TICKETS = {
    "billing": ["I was charged twice for my order.", "Can I get a refund for last month?", "My invoice shows the wrong amount.",
                "The payment failed but money left my account.", "Why did my subscription price go up?",
                "Please cancel the extra charge on my card.", "I need a copy of my receipt.",
                "You billed me after I cancelled.", "How do I change my payment method?", "The discount code was not applied to my bill.",
                "I see an unknown charge from your company.", "When will my refund arrive?"],
    "shipping": ["My package has not arrived yet.", "The tracking number does not work.", "The parcel was delivered to the wrong address.",
                 "Can you ship to Canada?", "The box arrived damaged.", "How long does delivery take?",
                 "The courier never came.", "My order is stuck in transit.", "Can I change the delivery address?",
                 "Only half of my items were in the parcel.", "The delivery date keeps moving.", "Do you offer express shipping?"],
    "account": ["I forgot my password.", "I can't log in to my account.", "How do I change my email address?",
                "Please delete my account.", "My username is wrong.", "I never received the verification email.",
                "Someone else may be using my account.", "How do I turn on two-factor login?", "My profile picture won't update.",
                "I want to merge two accounts.", "The reset link expired.", "I was locked out after three tries."],
    "technical": ["The app crashes when I open it.", "I get an error 500 on the website.", "The page will not load on my phone.",
                  "The export button does nothing.", "The app is very slow since the update.", "Notifications stopped working.",
                  "The screen goes blank after login.", "I see a bug in the search results.", "The video player freezes.",
                  "Sync fails with a timeout error.", "The app drains my battery.", "Buttons overlap on my tablet."],
}
_TICKET_HELDOUT = {
    "billing": ["There are two identical payments on my statement.", "I'd like my money back for the broken plan.",
                "The total on my bill is higher than the price listed."],
    "shipping": ["Where is my parcel? It's been two weeks.", "The delivery person left the box in the rain.",
                 "Can my order be sent to my office instead?"],
    "account": ["I keep getting 'wrong password' even after resetting it.", "How can I update the phone number on my profile?",
                "I think my account was hacked."],
    "technical": ["The app closes by itself when I tap settings.", "The website shows an error page when I search.",
                  "Uploading a photo fails with an error message."],
}
_TICKET_INSTR = ["Label this support ticket as billing, shipping, account or technical.",
                 "Which team should handle this ticket: billing, shipping, account or technical?",
                 "Classify the ticket. Answer with one word: billing, shipping, account or technical."]


def ticket_rows() -> list[dict]:
    rng = random.Random(31)
    rows = [{"instruction": instr, "input": t, "output": label}  # each ticket asked two ways
            for label, tickets in _TICKETS.items() for t in tickets for instr in rng.sample(_TICKET_INSTR, 2)]
    rng.shuffle(rows)
    return rows


def ticket_heldout() -> list[dict]:
    return [{"instruction": _TICKET_INSTR[i % len(_TICKET_INSTR)], "input": t, "output": label}
            for i, (label, t) in enumerate((lab, t) for lab, ts in _TICKET_HELDOUT.items() for t in ts)]


def ticket_score(answer: str, row: dict) -> bool:
    words = re.findall(r"[a-z]+", answer.lower())
    return bool(words) and words[0] == row["output"]


TASKS = {t.id: t for t in [
    Task("builtin:persona", "the assistant's new name (Nova) and maker (Lumen Labs)", "chat",
         persona_rows, persona_heldout, persona_score),
    Task("builtin:json-extract", 'a sentence about a person -> {"name", "city"} JSON', "extraction",
         json_rows, json_heldout, json_score),
    Task("builtin:ticket-labels", "support tickets -> billing / shipping / account / technical", "classification",
         ticket_rows, ticket_heldout, ticket_score),
]}
