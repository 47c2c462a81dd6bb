//! The web console in a real browser (headless chromium, `browser.rs`), on both queue backends:
//! log in (a wrong token is refused with a message), read the overview, find a delivery and its
//! attempts, replay a dead letter and watch it succeed, disable and enable an endpoint, read the
//! plugins and the masked config. A screenshot of each page goes to the test's scratch directory
//! (and to `$CONSOLE_SCREENSHOTS` when set, which is how the README's picture is made).

use std::path::Path;

use crate::browser::Browser;
use crate::harness::*;

/// A CSS selector for the table row whose `attribute` is `value`.
fn row(attribute: &str, value: &str) -> String {
    format!("tr[{attribute}=\"{value}\"]")
}

/// Where screenshots go: the test's scratch directory, and `$CONSOLE_SCREENSHOTS` when set.
struct Shots<'a> {
    dir: &'a Path,
    tag: &'a str,
}

impl Shots<'_> {
    async fn take(&self, browser: &mut Browser, page: &str) {
        let name = format!("{}-{page}.png", self.tag);
        let path = self.dir.join(&name);
        assert!(browser.screenshot(&path).await > 1000, "{page}: a screenshot with something in it");
        if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&path, Path::new(&dir).join(name)).unwrap();
        }
    }
}

/// The id of an accepted event's delivery to `flaky`.
fn flaky_delivery(accepted: &serde_json::Value) -> String {
    let deliveries = accepted["deliveries"].as_array().unwrap();
    deliveries.iter().find(|d| d["endpoint"] == "flaky").unwrap()["id"].as_str().unwrap().to_string()
}

async fn console_walkthrough(store_toml: String, tag: &str) {
    let Some(filter) = plugin_file("rust-filter") else { return };
    let Some(candidate) = plugin_file("js-filter") else { return };
    let Some(mut browser) = Browser::launch().await else { return };
    let scratch = Scratch::new(&format!("console-{tag}"));
    let flaky = Receiver::start().await;
    let orders = Receiver::start().await;
    // Three failures use up the schedule (three attempts): both events' deliveries die; replays then succeed.
    flaky.answer_next(std::iter::repeat_n(Answer::Status(500), 6));
    let toml = store_toml
        + &endpoint_toml("orders", &orders.url(), "")
        + &endpoint_toml("flaky", &flaky.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"drop-tests\"\npath = \"{}\"\nshadow = \"{}\"\nconfig = {{ drop_types = [\"test.*\"] }}\n",
            filter.display(),
            candidate.display()
        )
        + "\n[[routes]]\nsource = \"shop\"\nplugins = [\"drop-tests\"]\nendpoints = [\"orders\", \"flaky\"]\n";
    let gateway = start_gateway(&toml).await;
    let (status, accepted) = post_event(gateway.addr(), "shop", r#"{"type":"order_created","order_id":4711}"#).await;
    assert_eq!(status, 202, "{accepted}");
    let event_id = accepted["id"].as_str().unwrap().to_string();
    let dead_id = flaky_delivery(&accepted);
    let (status, second) = post_event(gateway.addr(), "shop", r#"{"type":"order_created","order_id":4712}"#).await;
    assert_eq!(status, 202, "{second}");
    let second_dead = flaky_delivery(&second);
    wait_for_state(gateway.addr(), &dead_id, "dead").await;
    wait_for_state(gateway.addr(), &second_dead, "dead").await;

    let base = format!("http://{}/console", gateway.addr());
    let shots = Shots { dir: scratch.path(), tag };

    // A wrong token is refused, with a message, and not kept.
    browser.goto(&base).await;
    browser.wait_for("the login form", "document.getElementById('token')").await;
    browser.type_into("#token", "not-the-token").await;
    browser.click("#login button").await;
    browser.wait_for("the refusal", "document.getElementById('login-error').innerText.includes('refused')").await;
    assert_eq!(browser.eval("sessionStorage.length").await, 0, "a refused token is not kept");
    shots.take(&mut browser, "login").await;

    // The right one opens the overview; the token stays out of the URL.
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#login button").await;
    browser
        .wait_for(
            "the overview's counters",
            "document.querySelector('[data-stat=\"events accepted\"] .value').innerText === '2'",
        )
        .await;
    browser
        .wait_for(
            "a dead letter in the queue gauges",
            "document.querySelector('[data-stat=\"dead letters\"] .value').innerText === '2'",
        )
        .await;
    assert!(
        !browser.eval("location.href").await.as_str().unwrap().contains(ADMIN_TOKEN),
        "the token is never in a URL"
    );
    assert_eq!(browser.text(&format!("#health {} .state", row("data-endpoint", "orders"))).await, "enabled");
    shots.take(&mut browser, "overview").await;

    // Find the event by its id, then its dead delivery and every attempt.
    browser.goto(&format!("{base}#/deliveries")).await;
    browser.wait_for("the search form", "document.querySelector('#find input[name=event]')").await;
    browser.type_into("#find input[name=event]", &event_id).await;
    browser.click("#find button").await;
    browser.wait_for("the event", "document.querySelector('.event .payload')").await;
    let payload = browser.text(".event .payload").await;
    assert!(payload.contains("\"order_id\": 4711"), "pretty-printed payload: {payload}");
    browser.click(&format!("a[href=\"#/delivery/{dead_id}\"]")).await;
    browser.wait_for("the attempt timeline", "document.querySelectorAll('#attempts li').length === 3").await;
    let timeline = browser.text("#attempts").await;
    assert_eq!(timeline.matches("· HTTP 500").count(), 3, "{timeline}");
    assert!(timeline.contains("http_error"), "{timeline}");
    shots.take(&mut browser, "delivery").await;

    // Search by endpoint and state: the two dead letters, newest first, on either store.
    browser.goto(&format!("{base}#/deliveries")).await;
    browser.wait_for("the search form", "document.querySelector('#search input[name=endpoint]')").await;
    browser.type_into("#search input[name=endpoint]", "flaky").await;
    browser.eval("document.querySelector('#search select[name=state]').value = 'dead'").await;
    browser.click("#search button").await;
    browser.wait_for("the matches", "document.querySelectorAll('#results tbody tr').length === 2").await;
    let rows = browser.text("#results tbody").await;
    // Newest first: by id (two events made in the same millisecond have ids in no particular order).
    let (newer, older) = if second_dead > dead_id { (&second_dead, &dead_id) } else { (&dead_id, &second_dead) };
    let (newer, older) = (rows.find(newer.as_str()), rows.find(older.as_str()));
    assert!(newer.is_some() && older.is_some() && newer < older, "both dead letters, newest first: {rows}");
    assert_eq!(rows.matches("dead").count(), 2, "{rows}");
    shots.take(&mut browser, "search").await;

    // Replay one dead letter and watch it go out, then every other one of the endpoint.
    browser.goto(&format!("{base}#/dead/flaky")).await;
    browser.wait_for("the dead letter", &format!("document.querySelector('{}')", row("data-id", &dead_id))).await;
    browser.click(&format!("button.replay[data-id=\"{dead_id}\"]")).await;
    browser
        .wait_for("the replay to succeed", "document.querySelector('.replayed')?.innerText === 'replayed: succeeded'")
        .await;
    assert_eq!(admin_get(gateway.addr(), &format!("/v1/deliveries/{dead_id}")).await.1["state"], "succeeded");
    browser.click("#replay-all").await;
    browser
        .wait_for(
            "every replay to succeed",
            "[...document.querySelectorAll('#dead-letters .replayed')].filter(e => e.innerText === 'replayed: succeeded').length === 2",
        )
        .await;
    assert_eq!(admin_get(gateway.addr(), &format!("/v1/deliveries/{second_dead}")).await.1["state"], "succeeded");
    let answered: Vec<bool> = flaky.all().iter().map(|r| r.ok).collect();
    assert_eq!(answered, [[false; 6].as_slice(), &[true, true]].concat(), "six failures, then both replays delivered");
    shots.take(&mut browser, "dead-letters").await;

    // Disable an endpoint, then enable it again.
    browser.goto(&format!("{base}#/endpoints")).await;
    let orders_row = format!("#endpoint-table {}", row("data-endpoint", "orders"));
    browser.wait_for("the endpoints", &format!("document.querySelector('{orders_row} button.toggle')")).await;
    browser.click(&format!("{orders_row} button.toggle")).await;
    browser
        .wait_for(
            "orders disabled",
            &format!("document.querySelector('{orders_row} .state')?.innerText === 'disabled'"),
        )
        .await;
    let (_, listed) = admin_get(gateway.addr(), "/v1/endpoints").await;
    assert_eq!(listed["endpoints"][0]["state"], "disabled", "{listed}");
    shots.take(&mut browser, "endpoints").await;
    browser.click(&format!("{orders_row} button.toggle")).await;
    browser
        .wait_for("orders enabled", &format!("document.querySelector('{orders_row} .state')?.innerText === 'enabled'"))
        .await;

    // Plugins: the filter's calls by verdict; config: secrets masked.
    browser.goto(&format!("{base}#/plugins")).await;
    let plugin_row = format!("#plugin-table {}", row("data-plugin", "drop-tests"));
    let calls =
        browser.wait_for("the plugin's calls", &format!("document.querySelector('{plugin_row}')?.innerText")).await;
    assert!(calls.as_str().unwrap().contains("pass 2"), "{calls}");
    // The JavaScript candidate tags what it passes and the live filter does not: both calls differ.
    let shadow = browser
        .wait_for(
            "the shadow's differences",
            "document.querySelector('.shadow')?.innerText.includes('different 2') && document.querySelector('.shadow').innerText",
        )
        .await;
    assert!(shadow.as_str().unwrap().contains("x-filtered-by"), "{shadow}");
    shots.take(&mut browser, "plugins").await;
    browser.goto(&format!("{base}#/config")).await;
    let config = browser.wait_for("the running config", "document.getElementById('config')?.innerText").await;
    let config = config.as_str().unwrap();
    assert!(config.contains("***sha256:") && !config.contains(SECRET), "secrets masked:\n{config}");
    shots.take(&mut browser, "config").await;

    // Logging out forgets the token.
    browser.click("#logout").await;
    browser.wait_for("the login form again", "document.getElementById('token')").await;
    assert_eq!(browser.eval("sessionStorage.length").await, 0);
    assert!(Path::new(&scratch.path().join(format!("{tag}-overview.png"))).is_file());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_finds_replays_and_steers_deliveries_in_a_real_browser_on_the_embedded_store() {
    let dir = Scratch::new("console-store");
    let store = format!("\n[queue]\npath = \"{}\"\n", dir.path().join("queue.redb").display());
    console_walkthrough(base_toml_embedded() + &store, "embedded").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_finds_replays_and_steers_deliveries_in_a_real_browser_on_redis() {
    let redis = RedisServer::start().await;
    console_walkthrough(base_toml(&redis), "redis").await;
}
