"""create_app: migration on start, health, OpenAPI, settings from the environment."""

from __future__ import annotations

import pytest

from jobenergy.collector.settings import ServerSettings


def test_create_app_migrates_a_fresh_database(make_client, tmp_path, make_batch):
    settings = ServerSettings(auth="none", db_url=f"sqlite:///{tmp_path / 'new.db'}", migrate=True)
    client = make_client(settings)
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.post("/api/v1/batches", content=make_batch().model_dump_json())
    assert response.status_code == 200, response.text


def test_openapi_lists_the_routes(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/v1/batches", "/api/v1/jobs/events", "/api/v1/jobs",
                 "/api/v1/jobs/{job_id}", "/api/v1/nodes", "/healthz"):
        assert path in spec["paths"], path
    body = spec["paths"]["/api/v1/batches"]["post"]["requestBody"]
    assert "intervals" in body["content"]["application/json"]["schema"]["properties"]


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("JOBENERGY_SERVER_PUE", "1.3")
    monkeypatch.setenv("JOBENERGY_SERVER_CARBON_INTENSITY_G_PER_KWH", "120")
    settings = ServerSettings()
    assert settings.pue == 1.3 and settings.effective_carbon_intensity_g_per_kwh == 120.0
    assert settings.carbon_intensity_fallback is False
    assert ServerSettings(_env_file=None, pue=1.0).max_body_bytes == 32 * 1024 * 1024
    monkeypatch.setenv("JOBENERGY_SERVER_PUE", "0.9")
    with pytest.raises(ValueError, match="pue"):
        ServerSettings()
