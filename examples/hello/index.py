"""A FunctionGraph-style Python function: works unchanged on FunctionGraph and on Triggerbus."""

import json


def handler(event, context):
    logger = context.getLogger()
    logger.info("event: %s" % json.dumps(event))
    if event.get("trigger_type") == "TIMER":
        return {"tick": event["time"], "note": event.get("user_event", "")}
    if "httpMethod" in event:  # APIG: answer with an HTTP response
        name = event.get("queryStringParameters", {}).get("name", context.getUserData("greeting") or "world")
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "text/plain"},
            "body": "hello %s from %s\n" % (name, context.getFunctionName()),
            "isBase64Encoded": False,
        }
    return {"echo": event, "request_id": context.getRequestID()}
