"""Official SDK callers, unchanged, pointed at the gateway (driven by tests/e2e_sdk.rs).

    python cases.py CASE...

Each case builds its client the way a workload's code does (base URL, API key or token, nothing
else: no extra headers, no special options) and makes one call. It prints one JSON line per
case on stdout: {"case": name, "result": {...}} with what the SDK returned, or
{"case": name, "exception": class name, "status": HTTP status, "body": error body} when the SDK
raised. The Rust test checks these and what reached the stand-in Azure; every prompt names its
case (first word), so the test finds the case's upstream request by its body.

With SDK_COUNTERS=1, after each case (and once before the first) a probe reads both workloads' token counters (the
`x-ratelimit-remaining-tokens` of a small chat made with each credential), so the test can
tell what every case was charged: {"case": name, ..., "counters": {...}}.

Environment: GATEWAY (http://127.0.0.1:<port>), GATEWAY_API_KEY, GATEWAY_JWT; SDK_HTTP2=1 gives
the openai and anthropic clients an HTTP/2 connection (`DefaultHttpxClient(http2=True)`, with
prior knowledge: the test gateway listens on cleartext), as a workload that turns it on does.
"""

import json
import os
import sys
import traceback

GATEWAY = os.environ["GATEWAY"]
KEY = os.environ["GATEWAY_API_KEY"]
JWT = os.environ["GATEWAY_JWT"]
# The dated Azure OpenAI version the AzureOpenAI callers use (the gateway replaces it with the
# backend's own).
AZURE_API_VERSION = "2025-04-01-preview"

HTTP2 = os.environ.get("SDK_HTTP2") == "1"
COUNTERS = os.environ.get("SDK_COUNTERS") == "1"

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def prompt(name):
    return [{"role": "user", "content": f"{name} hello"}]


def usage_of(u):
    if u is None:
        return None
    d = u.model_dump() if hasattr(u, "model_dump") else dict(u)
    return {k: v for k, v in d.items() if isinstance(v, int)}


# ----------------------------------------------------------------------------------------------
# openai: OpenAI(base_url=...)


def openai_client(api_key=KEY, base="/v1", **kw):
    from openai import OpenAI

    kw.setdefault("max_retries", 0)
    if HTTP2:
        from openai import DefaultHttpxClient

        kw.setdefault("http_client", DefaultHttpxClient(http1=False, http2=True))
    return OpenAI(base_url=GATEWAY + base, api_key=api_key, **kw)


def chat_result(r):
    return {
        "id": r.id,
        "model": r.model,
        "content": r.choices[0].message.content,
        "finish_reason": r.choices[0].finish_reason,
        "usage": usage_of(r.usage),
    }


def chat_stream_result(stream):
    """What a caller iterating a streamed chat completion sees, chunk by chunk."""
    chunks, text, usage = [], [], None
    for c in stream:
        chunks.append("choice" if c.choices else "empty")
        if c.choices and c.choices[0].delta and c.choices[0].delta.content:
            text.append(c.choices[0].delta.content)
        if c.usage is not None:
            usage = usage_of(c.usage)
            chunks[-1] += "+usage"
    return {"chunks": chunks, "content": "".join(text), "usage": usage}


@case
def oai_chat():
    return chat_result(
        openai_client().chat.completions.create(model="gpt-4o", messages=prompt("oai_chat"))
    )


@case
def oai_chat_v1():
    # The same SDK call, served by an Azure OpenAI v1 backend (model name -> deployment).
    return chat_result(
        openai_client().chat.completions.create(model="gpt-4o-v1", messages=prompt("oai_chat_v1"))
    )


@case
def oai_chat_stream():
    return chat_stream_result(
        openai_client().chat.completions.create(
            model="gpt-4o", messages=prompt("oai_chat_stream"), stream=True
        )
    )


@case
def oai_chat_stream_usage():
    return chat_stream_result(
        openai_client().chat.completions.create(
            model="gpt-4o",
            messages=prompt("oai_chat_stream_usage"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )


@case
def oai_chat_stream_no_usage():
    return chat_stream_result(
        openai_client().chat.completions.create(
            model="gpt-4o-v1",
            messages=prompt("oai_chat_stream_no_usage"),
            stream=True,
            stream_options={"include_usage": False},
        )
    )


@case
def oai_completions():
    r = openai_client().completions.create(
        model="instruct", prompt="oai_completions hello", max_tokens=3
    )
    return {"text": r.choices[0].text, "usage": usage_of(r.usage)}


@case
def oai_completions_stream():
    chunks, text = [], []
    for c in openai_client().completions.create(
        model="instruct", prompt="oai_completions_stream hello", max_tokens=3, stream=True
    ):
        chunks.append("choice" if c.choices else "empty")
        if c.choices:
            text.append(c.choices[0].text)
        if c.usage is not None:
            chunks[-1] += "+usage"
    return {"chunks": chunks, "text": "".join(text)}


@case
def oai_embeddings():
    r = openai_client().embeddings.create(model="embeddings", input="oai_embeddings three words")
    return {
        "count": len(r.data),
        "dimensions": len(r.data[0].embedding),
        "usage": usage_of(r.usage),
    }


@case
def oai_responses():
    r = openai_client().responses.create(model="gpt-4o", input="oai_responses hello")
    return {"output_text": r.output_text, "status": r.status, "usage": usage_of(r.usage)}


@case
def oai_responses_stream():
    events, text, usage = [], [], None
    for e in openai_client().responses.create(
        model="gpt-4o-v1", input="oai_responses_stream hello", stream=True
    ):
        events.append(e.type)
        if e.type == "response.output_text.delta":
            text.append(e.delta)
        if e.type == "response.completed":
            usage = usage_of(e.response.usage)
    return {"events": events, "text": "".join(text), "usage": usage}


@case
def oai_images():
    r = openai_client().images.generate(model="images", prompt="oai_images a lighthouse")
    return {"count": len(r.data), "url": r.data[0].url}


@case
def oai_speech():
    r = openai_client().audio.speech.create(model="speech", voice="alloy", input="oai_speech hi")
    return {"bytes": len(r.content)}


@case
def oai_transcription():
    r = openai_client().audio.transcriptions.create(
        model="whisper", file=("oai_transcription.wav", b"RIFF....WAVEfmt fake audio")
    )
    return {"text": r.text}


@case
def oai_translation():
    r = openai_client().audio.translations.create(
        model="whisper", file=("oai_translation.wav", b"RIFF....WAVEfmt fake audio")
    )
    return {"text": r.text}


@case
def oai_openai_v1_base():
    # OpenAI(base_url=".../openai/v1"), the Azure v1 API's own address form.
    return chat_result(
        openai_client(base="/openai/v1").chat.completions.create(
            model="gpt-4o-v1", messages=prompt("oai_openai_v1_base")
        )
    )


@case
def oai_models():
    c = openai_client()
    return {
        "ids": [m.id for m in c.models.list()],
        "retrieved": c.models.retrieve("gpt-4o").id,
    }


@case
def oai_model_unknown():
    return {"id": openai_client().models.retrieve("no-such-model").id}


@case
def oai_unknown_model():
    return chat_result(
        openai_client().chat.completions.create(
            model="no-such-model", messages=prompt("oai_unknown_model")
        )
    )


@case
def oai_jwt_chat():
    # OpenAI(api_key=<an Entra token>): the token goes as Authorization: Bearer, like a key.
    return chat_result(
        openai_client(api_key=JWT).chat.completions.create(
            model="gpt-4o", messages=prompt("oai_jwt_chat")
        )
    )


@case
def oai_bad_key():
    return chat_result(
        openai_client(api_key="not-a-gateway-key").chat.completions.create(
            model="gpt-4o", messages=prompt("oai_bad_key")
        )
    )


@case
def oai_retry():
    # The SDK's own retry (default max_retries=2) on a 429 with retry-after(-ms).
    return chat_result(
        openai_client(max_retries=2).chat.completions.create(
            model="gpt-4o", messages=prompt("oai_retry")
        )
    )


@case
def oai_stored_response():
    return {"id": openai_client().responses.retrieve("resp_0123456789").id}


@case
def oai_stored_chat():
    return {"id": openai_client().chat.completions.retrieve("chatcmpl-0123456789").id}


@case
def oai_files():
    return {"count": len(openai_client().files.list().data)}


# Foundry Agent Service gateway connections, as an OpenAI client configured with the
# connection's target: deployment in the path, or model in the body.


@case
def conn_deployment_in_path():
    return chat_result(
        openai_client(base="/deployments/gpt-4o").chat.completions.create(
            model="gpt-4o", messages=prompt("conn_deployment_in_path")
        )
    )


@case
def conn_model_in_body():
    return chat_result(
        openai_client(base="").chat.completions.create(
            model="gpt-4o", messages=prompt("conn_model_in_body")
        )
    )


@case
def conn_deployments():
    c = openai_client(base="")
    listed = c.get("/deployments", cast_to=object)
    one = c.get("/deployments/gpt-4o", cast_to=object)
    return {"names": [d["name"] for d in listed["value"]], "one": one}


# ----------------------------------------------------------------------------------------------
# openai: AzureOpenAI(azure_endpoint=..., api_version=...)


def azure_client(**kw):
    from openai import AzureOpenAI

    kw.setdefault("max_retries", 0)
    if "azure_ad_token" not in kw:
        kw.setdefault("api_key", KEY)
    if HTTP2:
        from openai import DefaultHttpxClient

        kw.setdefault("http_client", DefaultHttpxClient(http1=False, http2=True))
    return AzureOpenAI(azure_endpoint=GATEWAY, api_version=AZURE_API_VERSION, **kw)


@case
def az_chat():
    return chat_result(
        azure_client().chat.completions.create(model="gpt-4o", messages=prompt("az_chat"))
    )


@case
def az_chat_stream():
    return chat_stream_result(
        azure_client().chat.completions.create(
            model="gpt-4o", messages=prompt("az_chat_stream"), stream=True
        )
    )


@case
def az_embeddings():
    r = azure_client().embeddings.create(model="embeddings", input="az_embeddings two")
    return {"count": len(r.data), "usage": usage_of(r.usage)}


@case
def az_responses():
    r = azure_client().responses.create(model="gpt-4o", input="az_responses hello")
    return {"output_text": r.output_text, "usage": usage_of(r.usage)}


@case
def az_responses_stream():
    events, text = [], []
    for e in azure_client().responses.create(
        model="gpt-4o", input="az_responses_stream hello", stream=True
    ):
        events.append(e.type)
        if e.type == "response.output_text.delta":
            text.append(e.delta)
    return {"events": events, "text": "".join(text)}


@case
def az_models():
    return {"ids": [m.id for m in azure_client().models.list()]}


@case
def az_jwt_chat():
    return chat_result(
        azure_client(azure_ad_token=JWT).chat.completions.create(
            model="gpt-4o", messages=prompt("az_jwt_chat")
        )
    )


# ----------------------------------------------------------------------------------------------
# anthropic: Anthropic(base_url=...) and AnthropicFoundry(base_url=...)


def anthropic_client(**kw):
    from anthropic import Anthropic

    kw.setdefault("max_retries", 0)
    if "auth_token" not in kw:
        kw.setdefault("api_key", KEY)
    if HTTP2:
        from anthropic import DefaultHttpxClient

        kw.setdefault("http_client", DefaultHttpxClient(http1=False, http2=True))
    return Anthropic(base_url=GATEWAY, **kw)


def foundry_client(**kw):
    from anthropic import AnthropicFoundry

    kw.setdefault("max_retries", 0)
    if "azure_ad_token_provider" not in kw:
        kw.setdefault("api_key", KEY)
    if HTTP2:
        from anthropic import DefaultHttpxClient

        kw.setdefault("http_client", DefaultHttpxClient(http1=False, http2=True))
    return AnthropicFoundry(base_url=GATEWAY + "/anthropic/", **kw)


def message_result(m):
    return {
        "type": m.type,
        "model": m.model,
        "text": "".join(b.text for b in m.content if b.type == "text"),
        "stop_reason": m.stop_reason,
        "usage": usage_of(m.usage),
    }


def message_stream_result(client, name):
    events = []
    with client.messages.stream(
        model="claude-opus-4-5", max_tokens=4, messages=prompt(name)
    ) as stream:
        for e in stream:
            events.append(e.type)
        final = stream.get_final_message()
    return {"events": events, **message_result(final)}


def create_message(client, name, model="claude-opus-4-5"):
    return message_result(
        client.messages.create(model=model, max_tokens=4, messages=prompt(name))
    )


@case
def an_messages():
    return create_message(anthropic_client(), "an_messages")


@case
def an_messages_stream():
    return message_stream_result(anthropic_client(), "an_messages_stream")


@case
def an_jwt_messages():
    return create_message(anthropic_client(auth_token=JWT), "an_jwt_messages")


@case
def an_unknown_model():
    return create_message(anthropic_client(), "an_unknown_model", model="no-such-model")


@case
def an_bad_key():
    return create_message(anthropic_client(api_key="not-a-gateway-key"), "an_bad_key")


@case
def an_retry():
    return create_message(anthropic_client(max_retries=2), "an_retry")


@case
def af_messages():
    return create_message(foundry_client(), "af_messages")


@case
def af_messages_stream():
    return message_stream_result(foundry_client(), "af_messages_stream")


@case
def af_jwt_messages():
    return create_message(foundry_client(azure_ad_token_provider=lambda: JWT), "af_jwt_messages")


# ----------------------------------------------------------------------------------------------
# azure-ai-inference: ChatCompletionsClient / EmbeddingsClient (Foundry model inference)


def inference_key_client(cls):
    from azure.core.credentials import AzureKeyCredential

    return cls(endpoint=GATEWAY + "/models", credential=AzureKeyCredential(KEY), retry_total=0)


class StaticToken:
    """A TokenCredential holding the caller's Entra token (azure-identity's role)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken(JWT, 2**31)


def inference_chat_result(r):
    return {
        "model": r.model,
        "content": r.choices[0].message.content,
        "usage": usage_of(r.usage.as_dict() if r.usage else None),
    }


@case
def ai_chat():
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import UserMessage

    r = inference_key_client(ChatCompletionsClient).complete(
        model="mistral", messages=[UserMessage("ai_chat hello")]
    )
    return inference_chat_result(r)


@case
def ai_chat_stream():
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import UserMessage

    updates, text, usage = [], [], None
    for u in inference_key_client(ChatCompletionsClient).complete(
        model="mistral", messages=[UserMessage("ai_chat_stream hello")], stream=True
    ):
        updates.append("choice" if u.choices else "empty")
        if u.choices and u.choices[0].delta and u.choices[0].delta.content:
            text.append(u.choices[0].delta.content)
        if u.usage:
            usage = usage_of(u.usage.as_dict())
            updates[-1] += "+usage"
    return {"chunks": updates, "content": "".join(text), "usage": usage}


@case
def ai_embeddings():
    from azure.ai.inference import EmbeddingsClient

    r = inference_key_client(EmbeddingsClient).embed(
        model="embeddings", input=["ai_embeddings two words"]
    )
    return {"count": len(r.data), "usage": usage_of(r.usage.as_dict())}


@case
def ai_jwt_chat():
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import UserMessage

    client = ChatCompletionsClient(
        endpoint=GATEWAY + "/models",
        credential=StaticToken(),
        credential_scopes=["api://llm-gateway/.default"],
        retry_total=0,
    )
    # azure-core refuses bearer tokens over plain HTTP unless told otherwise (a per-call
    # option): the test gateway listens on loopback without TLS, a deployed one is https.
    r = client.complete(
        model="mistral", messages=[UserMessage("ai_jwt_chat hello")], enforce_https=False
    )
    return inference_chat_result(r)


@case
def ai_retry():
    from azure.ai.inference import ChatCompletionsClient
    from azure.ai.inference.models import UserMessage
    from azure.core.credentials import AzureKeyCredential

    # azure-core's RetryPolicy (default 3 retries) honours Retry-After on 429.
    client = ChatCompletionsClient(endpoint=GATEWAY + "/models", credential=AzureKeyCredential(KEY))
    r = client.complete(model="mistral", messages=[UserMessage("ai_retry hello")])
    return inference_chat_result(r)


# ----------------------------------------------------------------------------------------------


def error_of(e):
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)
    response = getattr(e, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if body is None and response is not None:
        try:
            body = json.loads(response.text() if callable(response.text) else response.text)
        except Exception:
            body = None
    return {"exception": type(e).__name__, "status": status, "body": body}


# The probe: a small chat with fixed bytes (its reservation is ceil(bytes / 4) + max_tokens).
PROBE_BODY = b'{"model":"gpt-4o","max_tokens":1,"messages":[{"role":"user","content":"probe hello"}]}'


def counters():
    """Each workload's token counter as a plain HTTP/1.1 request sees it: remaining tokens
    (the probe's own reservation taken) and the probe's real usage."""
    import httpx2

    out = {}
    with httpx2.Client(timeout=30) as http:
        for workload, credential in (("key", KEY), ("jwt", JWT)):
            r = http.post(
                GATEWAY + "/v1/chat/completions",
                content=PROBE_BODY,
                headers={"authorization": f"Bearer {credential}", "content-type": "application/json"},
            )
            out[workload] = {
                "status": r.status_code,
                "remaining": int(r.headers.get("x-ratelimit-remaining-tokens", "-1")),
                "probe_bytes": len(PROBE_BODY),
                "probe_total": r.json().get("usage", {}).get("total_tokens") if r.status_code == 200 else None,
            }
    return out


def main(names):
    if COUNTERS:
        print(json.dumps({"case": "_before", "counters": counters()}), flush=True)
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
        if COUNTERS:
            line["counters"] = counters()
        print(json.dumps(line, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] if len(sys.argv) > 1 else list(CASES))
