"""Guardrail cases: official SDK callers, unchanged, against the gateway (tests/e2e_guardrails.rs).

    python guardrails.py CASE...

One JSON line per case on stdout, as tests/sdk/cases.py prints them: {"case", "result"} or
{"case", "exception", "status", "body"}. Every prompt starts with its case's name, so the Rust
test finds the request that reached the stand-in Azure (or that none did).

Environment: GATEWAY, GATEWAY_API_KEY (a guarded workload), GATEWAY_EXEMPT_KEY (an exempt one).
"""

import json
import os
import sys
import traceback

GATEWAY = os.environ["GATEWAY"]
KEY = os.environ["GATEWAY_API_KEY"]
EXEMPT_KEY = os.environ.get("GATEWAY_EXEMPT_KEY", "")

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def openai_client(key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=GATEWAY + "/v1", api_key=key, max_retries=0)


def anthropic_client():
    from anthropic import Anthropic

    return Anthropic(base_url=GATEWAY, api_key=KEY, max_retries=0)


def chat(name, text, key=KEY, **kw):
    r = openai_client(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"{name} {text}"}], **kw
    )
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason}


def stream_text(stream):
    text = []
    for c in stream:
        if c.choices and c.choices[0].delta and c.choices[0].delta.content:
            text.append(c.choices[0].delta.content)
    return "".join(text)


# ----------------------------------------------------------------------------------------------
# Local rules: masked, blocked, exempt


@case
def oai_pii_masked():
    return chat("oai_pii_masked", f"mail {EMAIL} about card {CARD}")


@case
def oai_pii_stream():
    stream = openai_client().chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": f"oai_pii_stream write to {EMAIL}"}],
        stream=True,
    )
    return {"content": stream_text(stream)}


@case
def oai_deny_blocked():
    return chat("oai_deny_blocked", "what is the status of Project   FALCON?")


@case
def oai_ssn_blocked():
    return chat("oai_ssn_blocked", f"my ssn is {SSN}")


@case
def oai_ssn_in_tool_result():
    r = openai_client().chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "user", "content": "oai_ssn_in_tool_result look it up"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": f"record: ssn {SSN}"},
        ],
    )
    return {"content": r.choices[0].message.content}


@case
def resp_pii_masked():
    r = openai_client().responses.create(model="gpt-4o", input=f"resp_pii_masked mail {EMAIL}")
    return {"text": r.output_text}


@case
def emb_pii_masked():
    r = openai_client().embeddings.create(model="embeddings", input=[f"emb_pii_masked {EMAIL}"])
    return {"count": len(r.data)}


@case
def claude_pii_masked():
    r = anthropic_client().messages.create(
        model="claude-opus-4-5",
        max_tokens=32,
        system=f"claude_pii_masked operator {EMAIL}",
        messages=[{"role": "user", "content": [{"type": "text", "text": f"claude_pii_masked card {CARD}"}]}],
    )
    return {"text": r.content[0].text, "stop_reason": r.stop_reason}


@case
def claude_ssn_blocked():
    r = anthropic_client().messages.create(
        model="claude-opus-4-5",
        max_tokens=32,
        messages=[{"role": "user", "content": f"claude_ssn_blocked ssn {SSN}"}],
    )
    return {"text": r.content[0].text}


@case
def exempt_pii_passes():
    return chat("exempt_pii_passes", f"mail {EMAIL}", key=EXEMPT_KEY)


# ----------------------------------------------------------------------------------------------


def error_of(e):
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    response = getattr(e, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    return {"exception": type(e).__name__, "status": status, "body": body, "message": str(e)}


def main(names):
    for name in names:
        fn = CASES.get(name)
        if fn is None:
            print(json.dumps({"case": name, "exception": "UnknownCase"}), flush=True)
            continue
        try:
            line = {"case": name, "result": fn()}
        except Exception as e:  # the SDK's exception is the observation
            line = {"case": name, **error_of(e)}
            if line["status"] is None:
                line["traceback"] = traceback.format_exc()
        print(json.dumps(line, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] if len(sys.argv) > 1 else list(CASES))
